//! `rbuild build --call check|outline|targets` (and `--check`): evaluate the Dockerfile instead of building it,
//! printed as buildx prints these calls (text, or JSON with `--format json` / `--call NAME,format=json`). Also
//! the printing of build-check findings during a normal build.
//!
//! `check` converts every stage (resolving base images, as BuildKit's lint request does) and exits 1 when any
//! check fired or conversion failed; links to documentation are left out of the text, which instead gives each
//! rule's one-line explanation.

use crate::render;
use anyhow::{Result, bail};
use rbuild_builder::{BuildError, BuildRequest, Builder, Reporter};
use rbuild_frontend::CheckReport;
use rbuild_frontend::lint::report::{check_text, sorted, source_lines};
use serde_json::{Value, json};
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct CallArgs {
    /// Evaluate the Dockerfile instead of building: check (run the build checks), outline (build args, secrets
    /// and SSH agents of the target), targets (the stages); options after a comma: format=json
    #[arg(long = "call", value_name = "check|outline|targets[,format=json]")]
    call: Option<String>,
    /// Shorthand for --call check
    #[arg(long, conflicts_with = "call")]
    check: bool,
    /// The output format of --call: text or json
    #[arg(long = "format", value_name = "text|json")]
    format: Option<String>,
}

/// A parsed `--call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Check { json: bool },
    Outline { json: bool },
    Targets { json: bool },
}

impl CallArgs {
    /// The call requested, if any; `build` (buildx's default) means none.
    pub fn selected(&self) -> Result<Option<Call>> {
        let spec = match (&self.call, self.check) {
            (Some(c), _) => c.clone(),
            (None, true) => "check".to_string(),
            (None, false) => {
                if self.format.is_some() {
                    bail!("--format applies to --call only");
                }
                return Ok(None);
            }
        };
        let mut parts = spec.split(',');
        let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let mut format = self.format.clone().unwrap_or_else(|| "text".into());
        for opt in parts {
            match opt.split_once('=') {
                Some(("format", v)) => format = v.to_string(),
                // buildx's `ignorestatus`: accepted; rbuild's exit status follows the findings either way.
                Some(("ignorestatus", _)) => {}
                _ => bail!("invalid --call option {opt:?}: expected format=text|json"),
            }
        }
        let json = match format.as_str() {
            "json" => true,
            "text" | "" => false,
            other => bail!("unknown --call format {other:?}: expected text or json"),
        };
        Ok(Some(match name.as_str() {
            "build" => return Ok(None),
            "check" | "lint" => Call::Check { json },
            "outline" => Call::Outline { json },
            "targets" => Call::Targets { json },
            other => bail!("unknown --call function {other:?}: rbuild has build, check, outline and targets"),
        }))
    }
}

/// The build arguments, with `BUILDKIT_DOCKERFILE_CHECK` taken from the environment when no `--build-arg` sets
/// it (BuildKit reads it as a build argument only; the variable is a convenience for CI).
pub fn with_check_env(
    mut build_args: std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    let key = rbuild_frontend::lint::CHECK_BUILD_ARG;
    if !build_args.contains_key(key)
        && let Ok(v) = std::env::var(key)
    {
        build_args.insert(key.to_string(), v);
    }
    build_args
}

fn location_json(start: usize, end: usize) -> Value {
    json!({ "ranges": [{ "start": { "line": start }, "end": { "line": end.max(start) } }] })
}

/// Runs `call` on the request's Dockerfile; what it prints goes to stdout, as buildx prints it. `check` resolves
/// base images through the builder (the checks read their configs); `outline` and `targets` read only the text.
pub async fn run(call: &Call, builder: &Builder, req: BuildRequest, reporter: Arc<dyn Reporter>) -> Result<ExitCode> {
    let (file, text) = (req.dockerfile.name.clone(), req.dockerfile.text.clone());
    let ast = match rbuild_frontend::parser::parse(&text) {
        Ok(ast) => ast,
        Err(e) => {
            render::parse_error(&file, &text, &e);
            return Ok(ExitCode::from(1));
        }
    };
    let (file, text) = (file.as_str(), text.as_str());
    match call {
        Call::Check { json } => match builder.check(&req, reporter).await {
            Ok(report) => Ok(check(*json, file, text, report)),
            Err(BuildError::Convert { error, .. }) => {
                render::convert_error(file, text, &error);
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e.into()),
        },
        Call::Targets { json } => {
            let targets = match rbuild_frontend::outline::targets(&ast) {
                Ok(t) => t,
                Err(e) => {
                    render::convert_error(file, text, &e);
                    return Ok(ExitCode::from(1));
                }
            };
            if *json {
                let list: Vec<Value> = targets
                    .iter()
                    .map(|t| {
                        let mut v = json!({ "location": location_json(t.line, t.line) });
                        if let Some(n) = &t.name {
                            v["name"] = json!(n);
                        }
                        if t.default {
                            v["default"] = json!(true);
                        }
                        if !t.description.is_empty() {
                            v["description"] = json!(t.description);
                        }
                        v["base"] = json!(t.base);
                        if let Some(p) = &t.platform {
                            v["platform"] = json!(p);
                        }
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&json!({ "targets": list }))?);
            } else {
                let rows: Vec<Vec<String>> = std::iter::once(vec!["TARGET".to_string(), "DESCRIPTION".to_string()])
                    .chain(targets.iter().map(|t| {
                        let name = match (&t.name, t.default) {
                            (None, true) => "(default)".to_string(),
                            (Some(n), true) => format!("{n} (default)"),
                            (n, false) => n.clone().unwrap_or_default(),
                        };
                        vec![name, t.description.clone()]
                    }))
                    .collect();
                print!("{}", tabwrite(&rows, 1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Call::Outline { json } => {
            let o = match rbuild_frontend::outline::outline(
                &ast,
                &req.build_args,
                req.target.as_deref(),
                req.platforms.first().unwrap_or(&rbuild_types::oci::Platform::host()),
            ) {
                Ok(o) => o,
                Err(e) => {
                    render::convert_error(file, text, &e);
                    return Ok(ExitCode::from(1));
                }
            };
            if *json {
                let mut v = json!({});
                if let Some(n) = &o.name {
                    v["name"] = json!(n);
                }
                if !o.description.is_empty() {
                    v["description"] = json!(o.description);
                }
                let arg = |a: &rbuild_frontend::outline::OutlineArg| {
                    let mut v = json!({ "name": a.name, "location": location_json(a.line, a.line) });
                    if !a.description.is_empty() {
                        v["description"] = json!(a.description);
                    }
                    if let Some(val) = a.value.as_ref().filter(|v| !v.is_empty()) {
                        v["value"] = json!(val);
                    }
                    v
                };
                let mount = |s: &rbuild_frontend::outline::OutlineMount| {
                    let mut v = json!({ "name": s.name, "location": location_json(s.line, s.line) });
                    if s.required {
                        v["required"] = json!(true);
                    }
                    v
                };
                if !o.args.is_empty() {
                    v["args"] = o.args.iter().map(arg).collect();
                }
                if !o.secrets.is_empty() {
                    v["secrets"] = o.secrets.iter().map(mount).collect();
                }
                if !o.ssh.is_empty() {
                    v["ssh"] = o.ssh.iter().map(mount).collect();
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", outline_text(&o));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// buildx's `PrintOutline`.
fn outline_text(o: &rbuild_frontend::outline::Outline) -> String {
    let mut out = String::new();
    if o.name.is_some() || !o.description.is_empty() {
        let mut rows = vec![vec!["TARGET:".to_string(), o.name.clone().unwrap_or_else(|| "(default)".into())]];
        if !o.description.is_empty() {
            rows.push(vec!["DESCRIPTION:".into(), o.description.clone()]);
        }
        out.push_str(&tabwrite(&rows, 1));
        out.push('\n');
    }
    if !o.args.is_empty() {
        let mut rows = vec![vec!["BUILD ARG".to_string(), "VALUE".into(), "DESCRIPTION".into()]];
        rows.extend(
            o.args.iter().map(|a| vec![a.name.clone(), a.value.clone().unwrap_or_default(), a.description.clone()]),
        );
        out.push_str(&tabwrite(&rows, 3));
        out.push('\n');
    }
    for (title, list) in [("SECRET", &o.secrets), ("SSH", &o.ssh)] {
        if !list.is_empty() {
            let mut rows = vec![vec![title.to_string(), "REQUIRED".into()]];
            rows.extend(
                list.iter().map(|s| vec![s.name.clone(), if s.required { "true".into() } else { String::new() }]),
            );
            out.push_str(&tabwrite(&rows, 3));
            out.push('\n');
        }
    }
    out
}

/// Go's `text/tabwriter` with minwidth 0 and space padding: every cell but the last of a row is padded to its
/// column's widest cell plus `padding`.
fn tabwrite(rows: &[Vec<String>], padding: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                out.push_str(&format!("{cell:<w$}", w = widths[i] + padding));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

fn check(json: bool, file: &str, text: &str, report: CheckReport) -> ExitCode {
    let checks = sorted(&report.checks);
    if json {
        let warnings: Vec<Value> = checks
            .iter()
            .map(|c| {
                let mut v = json!({
                    "ruleName": c.rule.name,
                    "description": c.rule.description,
                    "detail": c.message,
                });
                if !c.rule.url.is_empty() {
                    v["url"] = json!(c.rule.url);
                }
                if let Some(at) = &c.location {
                    v["location"] = location_json(at.start_line, at.end_line);
                }
                v
            })
            .collect();
        let mut v = json!({ "warnings": warnings, "sources": [{ "filename": file, "language": "Dockerfile" }] });
        if let Some(e) = &report.error {
            let loc = e.location.as_ref().map_or(json!({}), |l| location_json(l.start_line, l.end_line));
            v["buildError"] = json!({ "message": e.message, "location": loc });
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        match checks.len() {
            0 => {}
            1 => println!("Check complete, 1 warning has been found!"),
            n => println!("Check complete, {n} warnings have been found!"),
        }
        let lines: Vec<&str> = text.split('\n').collect();
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for c in &checks {
            let _ = write!(out, "\n{}", check_text(file, &lines, c));
        }
        let _ = out.flush();
        drop(out);
        match &report.error {
            Some(e) => {
                if !checks.is_empty() {
                    println!();
                }
                println!("{}", e.message);
                if let Some(at) = &e.location {
                    print!("{}", source_lines(file, &lines, at.start_line, at.end_line));
                }
            }
            None if checks.is_empty() => println!("Check complete, no warnings found."),
            None => {}
        }
    }
    if checks.is_empty() && report.error.is_none() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lines_match_buildkit() {
        let text = "FROM a\nRUN b\nRUN c\nRUN d\nRUN e\nRUN f\n";
        let lines: Vec<&str> = text.split('\n').collect();
        let s = source_lines("Dockerfile", &lines, 3, 3);
        assert_eq!(
            s,
            "Dockerfile:3\n--------------------\n   1 |     FROM a\n   2 |     RUN b\n   3 | >>> RUN c\n   4 |     RUN d\n   5 |     RUN e\n--------------------\n"
        );
    }

    #[test]
    fn tabwriter_pads_all_but_the_last_column() {
        let rows = vec![vec!["TARGET".into(), "DESCRIPTION".into()], vec!["build (default)".into(), "".into()]];
        assert_eq!(tabwrite(&rows, 1), "TARGET          DESCRIPTION\nbuild (default) \n");
    }
}
