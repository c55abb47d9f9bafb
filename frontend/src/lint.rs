//! Build checks: BuildKit's lint rules that rbuild implements, with BuildKit's names and messages.
//!
//! A check never changes the build; it adds a warning in BuildKit's short format
//! (`RuleName: message (line N)`), so that output and CI greps written for BuildKit keep working. The
//! `# check=skip=Rule1,Rule2`, `# check=skip=all` and `# check=error=true` directive is honoured as BuildKit reads
//! it. Implemented today: `SecretsUsedInArgOrEnv` and `DuplicateStageName`.

use crate::convert::{ConvertError, ErrorKind};
use crate::instructions::Location;
use crate::parser::Ast;
use regex::Regex;
use std::sync::LazyLock;

/// BuildKit's `SecretsUsedInArgOrEnv` rule name.
pub const SECRETS_USED_IN_ARG_OR_ENV: &str = "SecretsUsedInArgOrEnv";

/// BuildKit's `DuplicateStageName` rule name.
pub const DUPLICATE_STAGE_NAME: &str = "DuplicateStageName";

/// BuildKit's deny list (`getSecretsRegex` in dockerfile2llb): one of these tokens as a whole `_`-separated word
/// of the name, case-insensitively.
static SECRET_DENY: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|secret|token)(?:_|$)").ok()
});

/// BuildKit's allow list: names with one of these tokens are not reported (`PUBLIC_KEY`).
static SECRET_ALLOW: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"(?i)(?:_|^)(?:public)(?:_|$)").ok());

/// Whether BuildKit's SecretsUsedInArgOrEnv rule takes `name` for the name of a secret.
pub fn is_secret_name(name: &str) -> bool {
    let hit = |re: &LazyLock<Option<Regex>>| re.as_ref().is_some_and(|r| r.is_match(name));
    hit(&SECRET_DENY) && !hit(&SECRET_ALLOW)
}

/// The rules in force and the warnings found so far.
#[derive(Debug, Default)]
pub struct Lint {
    skip_all: bool,
    skip: Vec<String>,
    error: bool,
    /// Names of the rules that fired, in order, each once.
    fired: Vec<String>,
    pub warnings: Vec<String>,
}

impl Lint {
    /// Reads the `# check=` directive of `ast` (none: every rule on, warnings only).
    pub fn from_directive(ast: &Ast) -> Result<Lint, ConvertError> {
        let mut lint = Lint::default();
        let Some(d) = ast.directives.iter().find(|d| d.name == "check") else { return Ok(lint) };
        let at = Location { start_line: d.line, end_line: d.line };
        let fail = |msg: String| {
            ConvertError::new(ErrorKind::Dockerfile, format!("failed to parse check options: {msg}"))
                .hint("# check=skip=<rule>[,<rule>...]|all;error=true|false")
                .located(Some(at.clone()))
        };
        let value = d.value.trim();
        if value.is_empty() {
            return Ok(lint);
        }
        for part in value.splitn(2, ';') {
            let Some((k, v)) = part.split_once('=') else { return Err(fail(format!("invalid check option {part:?}"))) };
            match k.trim() {
                "skip" if v.trim() == "all" => lint.skip_all = true,
                "skip" => lint.skip = v.split(',').map(|r| r.trim().to_string()).collect(),
                "error" => {
                    lint.error = match v.trim().to_ascii_lowercase().as_str() {
                        "1" | "t" | "true" => true,
                        "0" | "f" | "false" => false,
                        _ => return Err(fail(format!("invalid value {:?} for error", v.trim()))),
                    }
                }
                other => return Err(fail(format!("invalid check option {other:?}"))),
            }
        }
        Ok(lint)
    }

    fn report(&mut self, rule: &str, message: String, at: &Location) {
        if self.skip_all || self.skip.iter().any(|r| r == rule) {
            return;
        }
        if !self.fired.iter().any(|r| r == rule) {
            self.fired.push(rule.to_string());
        }
        self.warnings.push(format!("{rule}: {message} (line {})", at.start_line));
    }

    /// SecretsUsedInArgOrEnv for one ARG or ENV name (`instruction` is `"ARG"` or `"ENV"`).
    pub fn secret_key(&mut self, instruction: &str, name: &str, at: &Location) {
        if is_secret_name(name) {
            let message = format!(
                "Do not use ARG or ENV instructions for sensitive data ({instruction} {})",
                crate::parser::quote::go_quote(name)
            );
            self.report(SECRETS_USED_IN_ARG_OR_ENV, message, at);
        }
    }

    /// DuplicateStageName: a second stage with a name already used (the last one wins).
    pub fn duplicate_stage_name(&mut self, name: &str, at: &Location) {
        let message =
            format!("Duplicate stage name {}, stage names should be unique", crate::parser::quote::go_quote(name));
        self.report(DUPLICATE_STAGE_NAME, message, at);
    }

    /// With `# check=error=true`, any rule that fired fails the build, as in BuildKit.
    pub fn finish(&self) -> Result<(), ConvertError> {
        if self.error && !self.fired.is_empty() {
            return Err(ConvertError::new(
                ErrorKind::Check,
                format!("lint violation found for rules: {}", self.fired.join(", ")),
            )
            .hint("fix the warnings above, or skip rules with # check=skip=<rule>"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_follow_buildkit() {
        for name in [
            "PASSWORD",
            "db_password",
            "GITHUB_TOKEN",
            "api_key",
            "AWS_SECRET",
            "secret_MESSAGE",
            "auth",
            "Apikey",
            "MY_KEY_FILE",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        // A token must be a whole `_` word; `PUBLIC` allows it.
        for name in ["PUBLIC_KEY", "KEYBOARD", "MONKEY", "TOKENIZER", "AUTHOR", "PASSWORDS", "x-token"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }
}
