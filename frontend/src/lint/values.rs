//! Rules about expanded words: what conversion calls at the point where BuildKit's dispatcher checks them
//! (`validations.go`, `convert_expose.go`). Each function takes the words and the scope it needs, and reports
//! through [`Lint`]; none of them changes what is built.

use super::{Lint, rules, suggest_close};
use crate::instructions::Location;
use crate::parser::quote::go_quote;
use regex::{Regex, RegexBuilder};
use std::collections::BTreeSet;
use std::sync::LazyLock;

/// Build arguments BuildKit never puts in the environment, so never reports as undefined.
const NON_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// BuildKit's deny list (`getSecretsRegex`): one of these tokens as a whole `_`-separated word of the name,
/// case-insensitively.
const SECRET_DENY: &str =
    r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|secret|token)(?:_|$)";

/// BuildKit's allow list: names with one of these tokens are not reported (`PUBLIC_KEY`, `TOKEN_FILE`,
/// `AUTH_VERSION`). BuildKit 0.25 had only `public`; `file` and `version` came in 0.26.
const SECRET_ALLOW: &str = r"(?i)(?:_|^)(?:public|file|version)(?:_|$)";

/// A case-insensitive pattern compiled twice, lazily: with ASCII case folding for ASCII names (every name in
/// practice: compiling Unicode case folding cost about 20 ms, a third of an unchanged rebuild), and with Go's
/// Unicode simple folding (`ſ` matches `s`, `K` matches `k`) for the rest. On an ASCII name the two agree.
struct CaseInsensitive {
    ascii: LazyLock<Option<Regex>>,
    unicode: LazyLock<Option<Regex>>,
}

impl CaseInsensitive {
    fn is_match(&self, name: &str) -> bool {
        let re = if name.is_ascii() { &self.ascii } else { &self.unicode };
        re.as_ref().is_some_and(|r| r.is_match(name))
    }
}

static DENY: CaseInsensitive = CaseInsensitive {
    ascii: LazyLock::new(|| RegexBuilder::new(SECRET_DENY).unicode(false).build().ok()),
    unicode: LazyLock::new(|| Regex::new(SECRET_DENY).ok()),
};
static ALLOW: CaseInsensitive = CaseInsensitive {
    ascii: LazyLock::new(|| RegexBuilder::new(SECRET_ALLOW).unicode(false).build().ok()),
    unicode: LazyLock::new(|| Regex::new(SECRET_ALLOW).ok()),
};

/// The grammar of an image reference (`distribution/reference`): `[domain[:port]/]path[:tag][@digest]`, path
/// components lowercase. Go's `\w` is ASCII (`[0-9A-Za-z_]`), so it is spelled out: Rust's would take any Unicode
/// word character, and compiling it was slow.
static REFERENCE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    let domain_component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let domain = format!(r"(?:{domain_component}(?:\.{domain_component})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?");
    let component = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*";
    let tag = r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}";
    let digest = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    Regex::new(&format!(r"^(?:{domain}/)?{component}(?:/{component})*(?::{tag})?(?:@{digest})?$")).ok()
});

/// Whether BuildKit's SecretsUsedInArgOrEnv rule takes `name` for the name of a secret.
pub fn is_secret_name(name: &str) -> bool {
    DENY.is_match(name) && !ALLOW.is_match(name)
}

/// Whether `name` parses as an image reference (BuildKit's `reference.ParseNormalizedNamed`).
pub fn is_valid_reference(name: &str) -> bool {
    let (path, _) = name.split_once('@').unwrap_or((name, ""));
    let repo = path.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map_or(path, |(r, _)| r);
    let is_id = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
    !is_id && repo.len() <= 255 && REFERENCE.as_ref().is_some_and(|r| r.is_match(name))
}

impl Lint {
    /// SecretsUsedInArgOrEnv for one ARG or ENV name (`instruction` is `"ARG"` or `"ENV"`).
    pub fn secret_key(&mut self, instruction: &str, name: &str, at: &Location) {
        if is_secret_name(name) {
            let message =
                format!("Do not use ARG or ENV instructions for sensitive data ({instruction} {})", go_quote(name));
            self.run(&rules::SECRETS_USED_IN_ARG_OR_ENV, message, Some(at));
        }
    }

    /// ExposeProtoCasing and ExposeInvalidFormat for one expanded EXPOSE word.
    pub fn expose(&mut self, raw: &str, at: &Location) {
        let parts: Vec<&str> = raw.split(':').collect();
        let (ip, host_port, container) = match parts.as_slice() {
            [c] => ("", "", *c),
            [h, c] => ("", *h, *c),
            [ip, h, c] => (*ip, *h, *c),
            [.., h, c] => (&raw[..raw.len() - h.len() - c.len() - 2], *h, *c),
            [] => ("", "", ""),
        };
        let proto = container.split('/').nth(1).filter(|p| !p.is_empty()).unwrap_or("tcp");
        if proto != proto.to_lowercase() {
            let message = format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase");
            self.run(&rules::EXPOSE_PROTO_CASING, message, Some(at));
        }
        if !ip.is_empty() || !host_port.is_empty() {
            let message =
                format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'");
            self.run(&rules::EXPOSE_INVALID_FORMAT, message, Some(at));
        }
    }

    /// UndefinedArgInFrom: a variable in a FROM line (image or `--platform`) that no global ARG declares;
    /// `options` are the declared names to suggest from.
    pub fn undefined_arg_in_from(
        &mut self,
        unmatched: &BTreeSet<String>,
        declared: &dyn Fn(&str) -> bool,
        options: &[&str],
        at: &Location,
    ) {
        for arg in unmatched {
            if declared(arg) {
                continue;
            }
            let mut message = format!("FROM argument '{arg}' is not declared");
            if let Some(s) = suggest_close(arg, options.iter().copied(), true) {
                message.push_str(&format!(" (did you mean {s}?)"));
            }
            self.run(&rules::UNDEFINED_ARG_IN_FROM, message, Some(at));
        }
    }

    /// RedundantTargetPlatform and FromPlatformFlagConstDisallowed for a stage's `FROM --platform=<expr>`, given
    /// its expansion (value and the variables it used).
    pub fn from_platform(
        &mut self,
        expr: &str,
        word: &crate::shell::ProcessedWord,
        target_platform: &str,
        stage_name: &str,
        at: &Location,
    ) {
        let (value, matched, unmatched) = (word.result.as_str(), &word.matched, &word.unmatched);
        if matched.len() == 1 && unmatched.is_empty() && matched.contains("TARGETPLATFORM") && value == target_platform
        {
            let message =
                format!("Setting platform to predefined {expr} in FROM is redundant as this is the default behavior");
            self.run(&rules::REDUNDANT_TARGET_PLATFORM, message, Some(at));
        }
        if !matched.is_empty() || !unmatched.is_empty() {
            return;
        }
        let Ok(p) = crate::platform::parse(value) else { return };
        let p = crate::platform::normalize(&p);
        if stage_name.contains(&p.os) || stage_name.contains(&p.architecture) {
            return;
        }
        let message = format!("FROM --platform flag should not use constant value {}", go_quote(value));
        self.run(&rules::FROM_PLATFORM_FLAG_CONST_DISALLOWED, message, Some(at));
    }

    /// InvalidDefaultArgInFrom: with only the global ARGs' defaults, the FROM image `base` (as written) expands
    /// to `expanded`, which is no image reference.
    pub fn default_arg_in_from(&mut self, base: &str, expanded: &str, at: &Location) {
        if !is_valid_reference(expanded) {
            let message = format!("Default value for ARG {base} results in empty or invalid base image name");
            self.run(&rules::INVALID_DEFAULT_ARG_IN_FROM, message, Some(at));
        }
    }

    /// UndefinedVar for the variables a word referenced but the stage does not have; `declared` are the stage's
    /// ARGs (declared without a value they are still defined), `options` the names it has, for "did you mean".
    pub fn undefined_vars<'a>(
        &mut self,
        unmatched: &BTreeSet<String>,
        declared: &dyn Fn(&str) -> bool,
        options: impl IntoIterator<Item = &'a str> + Clone,
        at: &Location,
    ) {
        for var in unmatched {
            if declared(var) || NON_ENV_ARGS.contains(&var.as_str()) {
                continue;
            }
            let mut message = format!("Usage of undefined variable '${var}'");
            if let Some(s) = suggest_close(var, options.clone(), true) {
                message.push_str(&format!(" (did you mean ${s}?)"));
            }
            self.run(&rules::UNDEFINED_VAR, message, Some(at));
        }
    }

    /// WorkdirRelativePath: the first WORKDIR of a stage chain is relative.
    pub fn workdir(&mut self, path: &str, workdir_set: bool, at: &Location) {
        if !workdir_set && !path.starts_with('/') {
            let message =
                format!("Relative workdir {} can have unexpected results if the base image changes", go_quote(path));
            self.run(&rules::WORKDIR_RELATIVE_PATH, message, Some(at));
        }
    }

    /// JSONArgsRecommended: CMD or ENTRYPOINT (`keyword` as written) in shell form, with no SHELL set.
    pub fn json_args(&mut self, keyword: &str, shell_set: bool, at: &Location) {
        if !shell_set {
            let message = format!(
                "JSON arguments recommended for {keyword} to prevent unintended behavior related to OS signals"
            );
            self.run(&rules::JSON_ARGS_RECOMMENDED, message, Some(at));
        }
    }

    /// MultipleInstructionsDisallowed: a second CMD, ENTRYPOINT or HEALTHCHECK (`keyword` as written) in a
    /// stage; reported at the earlier one, which has no effect.
    pub fn used_once(&mut self, keyword: &str, previous: Option<&Location>) {
        if let Some(prev) = previous {
            let message = format!(
                "Multiple {keyword} instructions should not be used in the same stage because only the last one will be used"
            );
            self.run(&rules::MULTIPLE_INSTRUCTIONS_DISALLOWED, message, Some(prev));
        }
    }

    /// LegacyKeyValueFormat: `ENV key value` / `LABEL key value` (`keyword` as written).
    pub fn legacy_key_value(&mut self, keyword: &str, at: &Location) {
        let message =
            format!("\"{keyword} key=value\" should be used instead of legacy \"{keyword} key value\" format");
        self.run(&rules::LEGACY_KEY_VALUE_FORMAT, message, Some(at));
    }

    /// InvalidBaseImagePlatform: the base image's platform is not the one the stage builds for.
    pub fn base_image_platform(&mut self, image: &str, expected: &str, actual: &str, at: &Location) {
        let message = format!(
            "Base image {image} was pulled with platform {}, expected {} for current build",
            go_quote(actual),
            go_quote(expected)
        );
        self.run(&rules::INVALID_BASE_IMAGE_PLATFORM, message, Some(at));
    }

    /// CopyIgnoredFile: a COPY/ADD source from the context that `.dockerignore` excludes (`kind` is `"Copy"` or
    /// `"Add"`). Like BuildKit, only without `!` exceptions in `.dockerignore`, which make this undecidable
    /// without the file list.
    pub fn copy_ignored(
        &mut self,
        kind: &str,
        src: &str,
        matcher: &rbuild_types::patterns::PatternMatcher,
        at: &Location,
    ) {
        if matcher.has_exclusions() {
            return;
        }
        let src = rbuild_types::patterns::clean(src);
        let src = src.trim_start_matches('/');
        let src = if src.is_empty() { "." } else { src };
        if src == "." {
            let root_ignored =
                matcher.patterns().iter().any(|p| !p.is_exclusion() && matches!(p.as_str(), "*" | "**" | "**/*"));
            if !root_ignored {
                return;
            }
        }
        if matcher.matches_or_parent_matches(src).unwrap_or(false) {
            let message = format!("Attempting to {kind} file {} that is excluded by .dockerignore", go_quote(src));
            self.run(&rules::COPY_IGNORED_FILE, message, Some(at));
        }
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
            "MY_KEY_ID",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        // A token must be a whole `_` word; `PUBLIC`, `FILE` and `VERSION` allow it.
        for name in [
            "PUBLIC_KEY",
            "KEYBOARD",
            "MONKEY",
            "TOKENIZER",
            "AUTHOR",
            "PASSWORDS",
            "x-token",
            "TOKEN_FILE",
            "AUTH_VERSION",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn references_parse_like_distribution() {
        for ok in [
            "busybox",
            "library/busybox:1.36",
            "localhost:5000/a/b:t",
            "a@sha256:0123456789abcdef0123456789abcdef",
            "stage-1",
            "b.c",
        ] {
            assert!(is_valid_reference(ok), "{ok}");
        }
        // Go's `\w` in a tag is ASCII only.
        for bad in ["", "Busybox", ":tag", "a:", "a/", "a b", "-a", "a:tägg", "a:日本"] {
            assert!(!is_valid_reference(bad), "{bad}");
        }
    }

    /// Go's `(?i)` folds case by Unicode's simple folding: `ſ` (U+017F) is an `s`, `K` (U+212A) a `k`. ASCII names
    /// take the ASCII-only pattern; the others the Unicode one, so both agree with BuildKit.
    #[test]
    fn secret_names_fold_case_as_go_does() {
        assert!(is_secret_name("db_PassWord"));
        assert!(is_secret_name("\u{17f}ecret"), "long s folds to s");
        assert!(is_secret_name("api_\u{212a}ey"), "Kelvin sign folds to k");
        assert!(!is_secret_name("\u{17f}ecret_file"), "the allow list folds too");
        assert!(!is_secret_name("s\u{e9}cret"));
    }
}
