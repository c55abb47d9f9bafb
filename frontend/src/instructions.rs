//! Typed instructions: the parser's generic nodes, checked and split into what each instruction means.
//!
//! Nothing is expanded here: which words expand, and with which variables, depends on the ARG/ENV state at the
//! point of use, which only conversion knows. Every instruction keeps its source lines so that any later error
//! can point at the Dockerfile.

use crate::parser::{Heredoc, Node};
use std::fmt;

/// An instruction's position in the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub start_line: usize,
    pub end_line: usize,
}

/// A command in shell form (run through the stage's SHELL) or exec form (a JSON array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInstr {
    pub sources: Vec<String>,
    pub dest: String,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<String>,
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckInstr {
    /// `None` for `HEALTHCHECK NONE`.
    pub test: Option<Command>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub start_period: Option<String>,
    pub start_interval: Option<String>,
    pub retries: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInstr {
    pub command: Command,
    pub heredocs: Vec<Heredoc>,
    pub mounts: Vec<String>,
    pub network: Option<String>,
    pub security: Option<String>,
}

/// One Dockerfile instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From { image: String, name: Option<String>, platform: Option<String> },
    Run(RunInstr),
    Cmd(Command),
    Entrypoint(Command),
    Label(Vec<(String, String)>),
    Maintainer(String),
    Expose(Vec<String>),
    Env(Vec<(String, String)>),
    Add(CopyInstr),
    Copy(CopyInstr),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    Arg(Vec<(String, Option<String>)>),
    Onbuild(String),
    Stopsignal(String),
    Healthcheck(HealthcheckInstr),
    Shell(Vec<String>),
}

/// An instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub instruction: Instruction,
    pub location: Location,
    /// The instruction as written (one logical line), for history entries and error messages.
    pub original: String,
}

/// The instructions rbuild knows, for "did you mean" hints.
pub const INSTRUCTIONS: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// A node that does not form a valid instruction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InstructionError {
    pub message: String,
    pub hint: Option<String>,
    pub location: Location,
}

struct Flags {
    flags: Vec<(String, Option<String>)>,
    used: Vec<bool>,
    instruction: String,
    location: Location,
}

impl Flags {
    fn new(node: &Node, location: &Location) -> Flags {
        let flags: Vec<(String, Option<String>)> = node
            .flags
            .iter()
            .map(|f| {
                let f = f.trim_start_matches('-');
                match f.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (f.to_string(), None),
                }
            })
            .collect();
        let used = vec![false; flags.len()];
        Flags { flags, used, instruction: node.value.to_uppercase(), location: location.clone() }
    }

    fn err(&self, message: String, hint: Option<String>) -> InstructionError {
        InstructionError { message, hint, location: self.location.clone() }
    }

    /// A flag that takes a value; the last occurrence wins.
    fn string(&mut self, name: &str) -> Result<Option<String>, InstructionError> {
        let mut out = None;
        for (i, (k, v)) in self.flags.iter().enumerate() {
            if k == name {
                self.used[i] = true;
                match v {
                    Some(v) => out = Some(v.clone()),
                    None => {
                        return Err(self
                            .err(format!("missing a value on flag: --{name}"), Some(format!("write --{name}=VALUE"))));
                    }
                }
            }
        }
        Ok(out)
    }

    /// A flag that may be repeated.
    fn list(&mut self, name: &str) -> Result<Vec<String>, InstructionError> {
        let mut out = Vec::new();
        for (i, (k, v)) in self.flags.iter().enumerate() {
            if k == name {
                self.used[i] = true;
                match v {
                    Some(v) => out.push(v.clone()),
                    None => return Err(self.err(format!("missing a value on flag: --{name}"), None)),
                }
            }
        }
        Ok(out)
    }

    /// A boolean flag: `--link`, `--link=true`, `--link=false`.
    fn bool(&mut self, name: &str) -> Result<bool, InstructionError> {
        let mut out = false;
        for (i, (k, v)) in self.flags.iter().enumerate() {
            if k == name {
                self.used[i] = true;
                out = match v.as_deref() {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some(other) => {
                        return Err(self.err(format!("expecting boolean value for flag --{name}, not: {other}"), None));
                    }
                };
            }
        }
        Ok(out)
    }

    /// Fails on any flag that was not asked for.
    fn finish(self, known: &[&str]) -> Result<(), InstructionError> {
        for (i, (k, _)) in self.flags.iter().enumerate() {
            if !self.used[i] {
                let hint = crate::suggest(k, known).map(|s| format!("did you mean --{s}?"));
                return Err(InstructionError {
                    message: format!("unknown flag: --{k} for {}", self.instruction),
                    hint,
                    location: self.location,
                });
            }
        }
        Ok(())
    }
}

fn args(node: &Node) -> Vec<String> {
    node.next.iter().map(|n| n.value.clone()).collect()
}

fn command(node: &Node) -> Command {
    if node.json {
        Command::Exec(args(node))
    } else {
        Command::Shell(node.next.first().map(|n| n.value.clone()).unwrap_or_default())
    }
}

/// Turns one parsed instruction node into a typed instruction.
pub fn parse_instruction(node: &Node) -> Result<Located, InstructionError> {
    let location = Location { start_line: node.start_line, end_line: node.end_line };
    let err = |message: String, hint: Option<&str>| InstructionError {
        message,
        hint: hint.map(str::to_string),
        location: location.clone(),
    };
    let name = node.value.as_str();
    let upper = name.to_uppercase();
    let mut flags = Flags::new(node, &location);
    let a = args(node);
    let need_args = |min: usize, syntax: &str| {
        if a.len() < min || (min > 0 && a.iter().all(|s| s.is_empty())) {
            // BuildKit's words: one-value instructions need "exactly one", the others "at least one".
            let how = match name {
                "maintainer" | "workdir" | "user" | "stopsignal" => "exactly one argument".to_string(),
                _ if min == 1 => "at least one argument".to_string(),
                _ => format!("at least {min} arguments"),
            };
            Err(err(format!("{upper} requires {how}"), Some(syntax)))
        } else {
            Ok(())
        }
    };
    let instruction = match name {
        "from" => {
            let platform = flags.string("platform")?;
            flags.finish(&["platform"])?;
            match a.as_slice() {
                [image] => Instruction::From { image: image.clone(), name: None, platform },
                [image, kw, stage] if kw.eq_ignore_ascii_case("as") => {
                    Instruction::From { image: image.clone(), name: Some(stage.to_lowercase()), platform }
                }
                _ => {
                    return Err(err(
                        "FROM requires either one or three arguments".into(),
                        Some("FROM [--platform=<platform>] <image> [AS <name>]"),
                    ));
                }
            }
        }
        "run" => {
            let mounts = flags.list("mount")?;
            let network = flags.string("network")?;
            let security = flags.string("security")?;
            flags.finish(&["mount", "network", "security"])?;
            if node.next.is_empty() && node.heredocs.is_empty() {
                return Err(err(
                    "RUN requires at least one argument".into(),
                    Some("RUN <command> or RUN [\"executable\", \"arg\"]"),
                ));
            }
            Instruction::Run(RunInstr {
                command: command(node),
                heredocs: node.heredocs.clone(),
                mounts,
                network,
                security,
            })
        }
        "cmd" | "entrypoint" => {
            flags.finish(&[])?;
            let c = command(node);
            if name == "cmd" { Instruction::Cmd(c) } else { Instruction::Entrypoint(c) }
        }
        "label" | "env" => {
            flags.finish(&[])?;
            if node.next.is_empty() {
                return Err(err(
                    format!("{upper} requires at least one argument"),
                    Some(if name == "env" { "ENV <key>=<value> ..." } else { "LABEL <key>=<value> ..." }),
                ));
            }
            let mut pairs = Vec::new();
            for triple in a.chunks(3) {
                match triple {
                    [k, v, ..] => pairs.push((k.clone(), v.clone())),
                    _ => return Err(err(format!("{upper} names can not be blank"), None)),
                }
            }
            if name == "env" { Instruction::Env(pairs) } else { Instruction::Label(pairs) }
        }
        "maintainer" => {
            flags.finish(&[])?;
            need_args(1, "MAINTAINER <name>")?;
            Instruction::Maintainer(a.join(" "))
        }
        "expose" => {
            flags.finish(&[])?;
            need_args(1, "EXPOSE <port>[/<protocol>] ...")?;
            Instruction::Expose(a)
        }
        "add" | "copy" => {
            let from = if name == "copy" { flags.string("from")? } else { None };
            let chown = flags.string("chown")?;
            let chmod = flags.string("chmod")?;
            let link = flags.bool("link")?;
            let parents = flags.bool("parents")?;
            let excludes = flags.list("exclude")?;
            let (checksum, keep_git_dir) =
                if name == "add" { (flags.string("checksum")?, flags.bool("keep-git-dir")?) } else { (None, false) };
            let known: &[&str] = if name == "copy" {
                &["from", "chown", "chmod", "link", "parents", "exclude"]
            } else {
                &["chown", "chmod", "link", "parents", "exclude", "checksum", "keep-git-dir"]
            };
            flags.finish(known)?;
            if a.len() < 2 {
                return Err(err(
                    format!(
                        "{upper} requires at least two arguments, but only one was provided. Destination could not be determined"
                    ),
                    Some(&format!("{upper} <src>... <dest>")),
                ));
            }
            let (dest, sources) = a.split_last().map(|(d, s)| (d.clone(), s.to_vec())).unwrap_or_default();
            let c = CopyInstr {
                sources,
                dest,
                from,
                chown,
                chmod,
                link,
                parents,
                excludes,
                checksum,
                keep_git_dir,
                heredocs: node.heredocs.clone(),
            };
            if name == "add" { Instruction::Add(c) } else { Instruction::Copy(c) }
        }
        "volume" => {
            flags.finish(&[])?;
            need_args(1, "VOLUME <path> ... or VOLUME [\"<path>\", ...]")?;
            Instruction::Volume(a.into_iter().filter(|s| !s.is_empty()).collect())
        }
        "user" | "workdir" | "stopsignal" => {
            flags.finish(&[])?;
            let syntax = match name {
                "user" => "USER <user>[:<group>]",
                "workdir" => "WORKDIR <path>",
                _ => "STOPSIGNAL <signal>",
            };
            need_args(1, syntax)?;
            let v = a.join(" ");
            match name {
                "user" => Instruction::User(v),
                "workdir" => Instruction::Workdir(v),
                _ => Instruction::Stopsignal(v),
            }
        }
        "arg" => {
            flags.finish(&[])?;
            need_args(1, "ARG <name>[=<default value>]")?;
            let mut out = Vec::new();
            for word in &a {
                let (k, v) = match word.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (word.clone(), None),
                };
                if k.is_empty() {
                    return Err(err(
                        format!("ARG names can not be blank: {word:?}"),
                        Some("ARG <name>[=<default value>]"),
                    ));
                }
                out.push((k, v));
            }
            Instruction::Arg(out)
        }
        "onbuild" => {
            flags.finish(&[])?;
            let Some(inner) = node.next.first().and_then(|n| n.children.first()) else {
                return Err(err("ONBUILD requires at least one argument".into(), Some("ONBUILD <INSTRUCTION>")));
            };
            match inner.value.as_str() {
                "onbuild" => return Err(err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(), None)),
                "from" | "maintainer" => {
                    return Err(err(
                        format!("{} isn't allowed as an ONBUILD trigger", inner.value.to_uppercase()),
                        None,
                    ));
                }
                _ => {}
            }
            // Docker stores the trigger as the original text after the ONBUILD keyword.
            let trigger = strip_keyword(&node.original);
            Instruction::Onbuild(trigger)
        }
        "healthcheck" => {
            let interval = flags.string("interval")?;
            let timeout = flags.string("timeout")?;
            let start_period = flags.string("start-period")?;
            let start_interval = flags.string("start-interval")?;
            let retries = flags.string("retries")?;
            flags.finish(&["interval", "timeout", "start-period", "start-interval", "retries"])?;
            let Some(kind) = node.next.first() else {
                return Err(err(
                    "HEALTHCHECK requires an argument".into(),
                    Some("HEALTHCHECK [OPTIONS] CMD command | HEALTHCHECK NONE"),
                ));
            };
            let test = match kind.value.to_uppercase().as_str() {
                "NONE" => {
                    if node.next.len() > 1 {
                        return Err(err("HEALTHCHECK NONE takes no arguments".into(), None));
                    }
                    None
                }
                "CMD" => {
                    let rest = Node { next: node.next[1..].to_vec(), ..node.clone() };
                    if rest.next.is_empty() {
                        return Err(err(
                            "HEALTHCHECK CMD requires a command".into(),
                            Some("HEALTHCHECK [OPTIONS] CMD command"),
                        ));
                    }
                    Some(command(&rest))
                }
                other => {
                    return Err(err(
                        format!("Unknown type {other:?} in HEALTHCHECK (try CMD)"),
                        Some("HEALTHCHECK [OPTIONS] CMD command | HEALTHCHECK NONE"),
                    ));
                }
            };
            Instruction::Healthcheck(HealthcheckInstr {
                test,
                interval,
                timeout,
                start_period,
                start_interval,
                retries,
            })
        }
        "shell" => {
            flags.finish(&[])?;
            if !node.json {
                return Err(err(
                    "SHELL requires the arguments to be in JSON form".into(),
                    Some("SHELL [\"executable\", \"parameters\"]"),
                ));
            }
            need_args(1, "SHELL [\"executable\", \"parameters\"]")?;
            Instruction::Shell(a)
        }
        other => {
            let hint = crate::suggest(other, INSTRUCTIONS).map(|s| format!("did you mean {}?", s.to_uppercase()));
            return Err(InstructionError {
                message: format!("unknown instruction: {}", other.to_uppercase()),
                hint,
                location,
            });
        }
    };
    Ok(Located { instruction, location, original: node.original.clone() })
}

fn strip_keyword(original: &str) -> String {
    let t = original.trim_start();
    match t.find(char::is_whitespace) {
        Some(i) => t[i..].trim().to_string(),
        None => String::new(),
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Shell(s) => f.write_str(s),
            Command::Exec(v) => write!(f, "{}", serde_json::to_string(v).unwrap_or_default()),
        }
    }
}
