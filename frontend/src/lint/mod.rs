//! Build checks: BuildKit's Dockerfile lint rules, with BuildKit's names, descriptions and message texts.
//!
//! A check never changes the build; it records a [`Check`] (rule, message, lines) that the CLI prints as a
//! warning, or, for `--call check`, as the result. The short form `Rule: message (line N)` is BuildKit's, so that
//! output and CI greps written for BuildKit keep working. Which rules run is BuildKit's `# check=` syntax
//! (`skip=Rule1,Rule2`, `skip=all`, `error=true`), read from the Dockerfile directive or, replacing it, from the
//! `BUILDKIT_DOCKERFILE_CHECK` build argument.
//!
//! The rules live next to what they look at: [`syntax`] holds those that need only the parsed Dockerfile (casing,
//! stage names, empty continuations, MAINTAINER); [`values`] those that need expanded words (ports, platforms,
//! variables, secrets); conversion calls them where BuildKit's dispatcher does, so that a normal build reports
//! dispatch-time rules only for the stages it builds, and `--call check` (which converts every stage) for all.

pub mod report;
pub mod rules;
pub mod syntax;
pub mod values;

use crate::convert::{ConvertError, ErrorKind};
use crate::instructions::Location;
use crate::parser::Ast;
pub use rules::Rule;
use std::collections::HashSet;
pub use values::is_secret_name;

/// The build argument (and CLI environment variable) that replaces the `# check=` directive.
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// One finding of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub rule: &'static Rule,
    /// BuildKit's formatted message (`Stage name 'Foo' should be lowercase`).
    pub message: String,
    /// The Dockerfile lines the finding is about (`None` for a trigger inherited from a base image).
    pub location: Option<Location>,
}

impl Check {
    /// BuildKit's short form: `Rule: message (line N)`.
    pub fn short(&self) -> String {
        match &self.location {
            Some(at) if at.start_line > 0 => format!("{}: {} (line {})", self.rule.name, self.message, at.start_line),
            _ => format!("{}: {}", self.rule.name, self.message),
        }
    }
}

/// Which rules run, and whether a finding fails the build: BuildKit's `# check=` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LintConfig {
    pub skip_all: bool,
    pub skip: Vec<String>,
    pub error: bool,
}

impl LintConfig {
    /// BuildKit's `ParseLintOptions`: `skip=A,B|all;error=true`, at most three `;`-separated options.
    pub fn parse(value: &str) -> Result<LintConfig, String> {
        let mut config = LintConfig::default();
        let value = value.trim();
        if value.is_empty() {
            return Ok(config);
        }
        for part in value.splitn(3, ';') {
            let Some((k, v)) = part.split_once('=') else { return Err(format!("invalid check option {part:?}")) };
            match k.trim() {
                "skip" if v.trim() == "all" => config.skip_all = true,
                "skip" => config.skip = v.split(',').map(|r| r.trim().to_string()).collect(),
                // rbuild has no experimental rules: accepted and ignored, as BuildKit does for unknown names.
                "experimental" => {}
                "error" => {
                    config.error = match v.trim() {
                        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                        other => return Err(format!("failed to parse check option {part:?}: invalid value {other:?}")),
                    }
                }
                other => return Err(format!("invalid check option {other:?}")),
            }
        }
        Ok(config)
    }
}

/// The rules in force and the findings so far.
#[derive(Debug, Default)]
pub struct Lint {
    config: LintConfig,
    /// Names of the rules that fired, in order, each once.
    fired: Vec<&'static str>,
    pub checks: Vec<Check>,
    /// Start lines of ENV and LABEL instructions in the legacy `KEY VALUE` form (found by [`syntax::check`],
    /// reported when conversion dispatches them).
    pub(crate) legacy_kv_lines: HashSet<usize>,
}

impl Lint {
    /// The configuration of `ast`'s `# check=` directive, or of `override_value` (the `BUILDKIT_DOCKERFILE_CHECK`
    /// build argument) when given; none: every rule on, warnings only.
    pub fn new(ast: &Ast, override_value: Option<&str>) -> Result<Lint, ConvertError> {
        let (value, at, what) = match override_value {
            Some(v) => (v.to_string(), None, CHECK_BUILD_ARG),
            None => match ast.directives.iter().find(|d| d.name == "check") {
                Some(d) => {
                    // BuildKit keeps the first space-separated word of the directive.
                    let v = d.value.split(' ').next().unwrap_or_default().to_string();
                    (v, Some(Location { start_line: d.line, end_line: d.line }), "check options")
                }
                None => return Ok(Lint::default()),
            },
        };
        let config = LintConfig::parse(&value).map_err(|msg| {
            ConvertError::new(ErrorKind::Dockerfile, format!("failed to parse {what}: {msg}"))
                .hint("# check=skip=<rule>[,<rule>...]|all;error=true|false")
                .located(at)
        })?;
        Ok(Lint { config, ..Lint::default() })
    }

    /// Whether `rule` runs under this configuration.
    pub fn enabled(&self, rule: &Rule) -> bool {
        !(self.config.skip_all || self.config.skip.iter().any(|r| r == rule.name))
    }

    /// Records a finding of `rule` unless the configuration skips it.
    pub fn run(&mut self, rule: &'static Rule, message: String, at: Option<&Location>) {
        if !self.enabled(rule) {
            return;
        }
        if !self.fired.contains(&rule.name) {
            self.fired.push(rule.name);
        }
        self.checks.push(Check { rule, message, location: at.cloned() });
    }

    /// With `error=true`, any rule that fired fails the build, with BuildKit's message.
    pub fn error(&self) -> Option<ConvertError> {
        // The error replaces the build result, so it carries the findings themselves.
        let mut found: Vec<String> = self.checks.iter().take(10).map(Check::short).collect();
        if self.checks.len() > 10 {
            found.push(format!("and {} more", self.checks.len() - 10));
        }
        (self.config.error && !self.fired.is_empty()).then(|| {
            ConvertError::new(ErrorKind::Check, format!("lint violation found for rules: {}", self.fired.join(", ")))
                .hint(format!("{}; fix them, or skip rules with # check=skip=<rule>", found.join("; ")))
        })
    }
}

/// BuildKit's `suggest.Search`: the option closest to `word` by edit distance, if closer than 3 (none when one
/// matches exactly).
pub fn suggest_close<'a>(
    word: &str,
    options: impl IntoIterator<Item = &'a str>,
    case_sensitive: bool,
) -> Option<String> {
    if word.len() > 256 {
        return None;
    }
    let fold = |s: &str| if case_sensitive { s.to_string() } else { s.to_lowercase() };
    let val = fold(word);
    let mut best: Option<String> = None;
    let mut min = 3;
    for opt in options {
        if opt.len() > 256 {
            continue;
        }
        let o = fold(opt);
        if o == val {
            return None;
        }
        let d = crate::edit_distance(&val, &o);
        if d < min {
            min = d;
            best = Some(o);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_as_buildkit_reads_them() {
        let c = LintConfig::parse("skip=A, B;error=true").unwrap();
        assert_eq!(c, LintConfig { skip_all: false, skip: vec!["A".into(), "B".into()], error: true });
        assert!(LintConfig::parse("skip=all").unwrap().skip_all);
        assert!(LintConfig::parse("skip").is_err());
        assert!(LintConfig::parse("error=maybe").is_err());
        assert!(LintConfig::parse("color=true").is_err());
    }

    #[test]
    fn suggestions_follow_buildkit() {
        assert_eq!(suggest_close("VERSON", ["VERSION", "PATH"], true).as_deref(), Some("VERSION"));
        assert_eq!(suggest_close("VERSION", ["VERSION", "VERSON"], true), None);
        assert_eq!(suggest_close("ABC", ["XYZW"], true), None);
    }
}
