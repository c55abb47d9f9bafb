//! Build progress: one [`Renderer`] per `--progress` mode, each a [`rbuild_solver::Progress`] sink for the steps
//! plus a place for the build-level lines that belong to no step ("writing image", "naming to", warnings), so that
//! `--progress quiet` and `-q` can silence everything and `rawjson` can keep stderr machine-readable.
//!
//! The modes are buildx's: `plain` (BuildKit's line format, the default off a terminal), `tty` (a live view redrawn
//! in place by `indicatif`, the default on one), `quiet` and `rawjson` (BuildKit's `SolveStatus`, one JSON object
//! per line). The choice is made once, in [`choose`], from the flag, `BUILDKIT_PROGRESS` and whether stderr is a
//! terminal; the renderers never read the environment themselves.

mod plain;
mod quiet;
mod rawjson;
mod text;
mod tty;

pub use plain::PlainProgress;
pub use quiet::QuietProgress;
pub use rawjson::RawJsonProgress;
pub use tty::TtyProgress;

use rbuild_builder::Reporter;
use rbuild_solver::{Graph, Op, VertexId};
use std::sync::Arc;

/// A progress sink for a whole build as the CLI shows it: the builder's [`Reporter`] (steps, build-level lines),
/// plus what goes to stdout.
pub trait Renderer: Reporter {
    /// A result line for stdout (a pushed image's `name@digest`); quiet mode keeps stdout for the image ID alone.
    fn result(&self, text: &str) {
        println!("{text}");
    }
    /// The built image's ID (its config digest); quiet mode prints it on stdout.
    fn image_id(&self, id: &str) {
        let _ = id;
    }
}

/// `rbuild build`'s progress flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ProgressArgs {
    /// How to show progress: auto (tty on a terminal, else plain), tty, plain, quiet or rawjson
    /// [default: $BUILDKIT_PROGRESS, else auto]
    #[arg(long, value_enum, value_name = "MODE")]
    progress: Option<Mode>,
    /// Print nothing but the image ID (on stdout), and errors (`--progress quiet`)
    #[arg(short = 'q', long)]
    quiet: bool,
}

impl ProgressArgs {
    /// The renderer these flags, `BUILDKIT_PROGRESS`, the locale and stderr ask for.
    pub fn renderer(&self) -> anyhow::Result<Arc<dyn Renderer>> {
        use std::io::IsTerminal as _;
        let var = |k: &str| std::env::var(k).ok();
        let env_value = var("BUILDKIT_PROGRESS");
        // A terminal that cannot move the cursor (TERM=dumb: editors' shells, some CI consoles) gets plain lines.
        let tty = std::io::stderr().is_terminal() && var("TERM").as_deref() != Some("dumb");
        choose(self.progress, env_value.as_deref(), self.quiet, tty, locale_is_utf8(&var)).map_err(anyhow::Error::msg)
    }
}

/// `--progress`, as buildx spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// tty on a terminal, plain otherwise
    Auto,
    /// a live view redrawn in place
    Tty,
    /// one line per event, BuildKit's format
    Plain,
    /// the image ID on stdout, nothing else but errors
    Quiet,
    /// BuildKit's SolveStatus as JSON, one object per line
    Rawjson,
}

/// The renderer for `flag` (else `BUILDKIT_PROGRESS` in `env_value`, else auto). `quiet` (`-q`) wins over both.
/// `stderr_is_tty` decides auto; `utf8` whether the tty view may draw non-ASCII characters.
pub fn choose(
    flag: Option<Mode>,
    env_value: Option<&str>,
    quiet: bool,
    stderr_is_tty: bool,
    utf8: bool,
) -> Result<Arc<dyn Renderer>, String> {
    let mode = match (flag, env_value.filter(|v| !v.is_empty())) {
        (Some(m), _) => m,
        (None, Some(v)) => <Mode as clap::ValueEnum>::from_str(v, true).map_err(|_| {
            format!("BUILDKIT_PROGRESS={v:?} is not a progress mode: use auto, tty, plain, quiet or rawjson")
        })?,
        (None, None) => Mode::Auto,
    };
    let mode = match mode {
        _ if quiet => Mode::Quiet,
        Mode::Auto if stderr_is_tty => Mode::Tty,
        Mode::Auto => Mode::Plain,
        m => m,
    };
    Ok(match mode {
        Mode::Tty => Arc::new(TtyProgress::new(utf8)),
        Mode::Quiet => Arc::new(QuietProgress),
        Mode::Rawjson => Arc::new(RawJsonProgress::new()),
        Mode::Plain | Mode::Auto => Arc::new(PlainProgress::new()),
    })
}

/// Whether the locale's character set is UTF-8 (`LC_ALL`, else `LC_CTYPE`, else `LANG`, as C's setlocale reads them).
pub fn locale_is_utf8(var: &dyn Fn(&str) -> Option<String>) -> bool {
    let value = ["LC_ALL", "LC_CTYPE", "LANG"].iter().find_map(|k| var(k).filter(|v| !v.is_empty()));
    value.is_some_and(|v| {
        let v = v.to_ascii_lowercase();
        v.contains("utf-8") || v.contains("utf8")
    })
}

/// The steps a build of `targets` will report on: the exec and file ops they need (sources report nothing).
pub fn steps(graph: &Graph, targets: &[VertexId]) -> usize {
    graph.needed(targets).into_iter().filter(|&v| matches!(graph.vertices[v].op, Op::Exec(_) | Op::File(_))).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn locale_is_read_as_setlocale_does() {
        assert!(locale_is_utf8(&env(&[("LANG", "en_US.UTF-8")])));
        assert!(locale_is_utf8(&env(&[("LC_ALL", "C.utf8"), ("LANG", "C")])));
        assert!(!locale_is_utf8(&env(&[("LC_ALL", "C"), ("LANG", "en_US.UTF-8")])), "LC_ALL wins");
        assert!(!locale_is_utf8(&env(&[("LC_CTYPE", "POSIX")])));
        assert!(!locale_is_utf8(&env(&[])), "no locale is C, which is ASCII");
    }

    #[test]
    fn a_bad_buildkit_progress_is_an_error_naming_it() {
        let err = choose(None, Some("fancy"), false, false, true).err().expect("refused");
        assert!(err.contains("BUILDKIT_PROGRESS=\"fancy\""), "{err}");
        assert!(choose(None, Some("PLAIN"), false, true, true).is_ok(), "case-insensitive, as buildx");
    }
}
