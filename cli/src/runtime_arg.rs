//! `--runtime`: which OCI runtime runs RUN steps (see `rbuild_executor::runtime::kind`).

use anyhow::{Result, bail};
use rbuild_executor::runtime::RuntimeKind;

#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// The OCI runtime of RUN steps: runc, crun, or auto (crun where it is installed and works on this host, else
    /// runc)
    #[arg(long = "runtime", env = "RBUILD_RUNTIME", default_value = "auto", value_name = "runc|crun|auto")]
    runtime: String,
}

impl RuntimeArgs {
    pub fn kind(&self) -> Result<RuntimeKind> {
        match self.runtime.as_str() {
            "auto" => Ok(RuntimeKind::preferred()),
            name => match RuntimeKind::parse(name) {
                Some(kind) => Ok(kind),
                None => bail!("unknown --runtime {name:?}: use runc, crun or auto"),
            },
        }
    }
}
