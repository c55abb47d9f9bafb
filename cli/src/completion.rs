//! `rbuild completion bash|zsh|fish`: a shell completion script generated from the argument definitions by
//! `clap_complete`, so it never falls behind the flags. `source <(rbuild completion bash)` enables it.

use std::process::ExitCode;

pub fn run(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = <crate::Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "rbuild", &mut std::io::stdout());
    ExitCode::SUCCESS
}
