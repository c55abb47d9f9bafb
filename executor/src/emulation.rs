//! Running a step for another platform: natively when the kernel can, else under QEMU user-mode emulation.
//!
//! Three ways, tried in order, as BuildKit does:
//! 1. **Native.** The machine's own architecture, or one its kernel also runs (`linux/386` on amd64). Found by
//!    probing: a minimal program for that architecture is executed, and the kernel either runs it or refuses it.
//!    A table would be wrong on kernels built without compat support.
//! 2. **binfmt_misc.** A handler for the architecture registered with the `F` (fix-binary) flag: the kernel opened
//!    the emulator when it was registered, so it also works inside the container's mount namespace, for the first
//!    process and every one it starts.
//! 3. **Injection.** The static emulator from Debian's `qemu-user-static` is bound read-only into the container
//!    at `/dev/.buildkit_qemu_emulator` (BuildKit's path) and made the container's first process; it runs the
//!    step's program. Programs that process starts are run by it as well where QEMU can (it re-executes itself for
//!    `/proc/self/exe`, as a static busybox shell does for its applets), and otherwise need a handler: Debian's QEMU
//!    hands `execve` to the kernel, which refuses a foreign program (`Exec format error`), and the step's failure
//!    says so ([`child_exec_hint`]). BuildKit has the same first-process limit with a stock QEMU; the
//!    `buildkit-qemu-*` emulators it looks for on its `PATH` (tonistiigi/binfmt's "buildkit" build) are patched to
//!    run `execve`'d programs through themselves, which an unpatched Debian binary does not.
//!
//! Neither possible: an error naming the package and the binfmt_misc setting.

use rbuild_types::oci::Platform;
use std::path::{Path, PathBuf};

/// Where the injected emulator appears in the container.
pub const EMULATOR_PATH: &str = "/dev/.buildkit_qemu_emulator";

/// How a step for a platform runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulation {
    /// The kernel runs it (natively, or through a fix-binary binfmt_misc handler).
    None,
    /// Through this static emulator, injected into the container.
    Inject(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmulationError {
    #[error(
        "this machine cannot run {platform} programs: install Debian's qemu-user-static package (it provides \
         {emulator}), or register a binfmt_misc handler for {qemu_arch} with the F (fix-binary) flag"
    )]
    NoEmulator { platform: String, emulator: String, qemu_arch: String },
    #[error("no QEMU user-mode emulator is known for the architecture {architecture:?}")]
    UnknownArchitecture { architecture: String },
}

/// Where to look: the binfmt_misc directory and the emulators' directory (fixed on a real machine; tests point
/// them elsewhere).
#[derive(Debug, Clone)]
pub struct Host {
    pub binfmt_dir: PathBuf,
    pub emulator_dir: PathBuf,
    /// A directory to write the probe programs to.
    pub probe_dir: PathBuf,
}

impl Host {
    pub fn new(probe_dir: PathBuf) -> Host {
        Host {
            binfmt_dir: PathBuf::from("/proc/sys/fs/binfmt_misc"),
            emulator_dir: PathBuf::from("/usr/bin"),
            probe_dir,
        }
    }

    /// How a step for `platform` runs here.
    pub fn emulation(&self, platform: &Platform) -> Result<Emulation, EmulationError> {
        let qemu_arch = qemu_arch(&platform.architecture)
            .ok_or_else(|| EmulationError::UnknownArchitecture { architecture: platform.architecture.clone() })?;
        if self.runs_natively(&platform.architecture) || self.has_fix_binary_handler(qemu_arch) {
            return Ok(Emulation::None);
        }
        let emulator = self.emulator_dir.join(format!("qemu-{qemu_arch}-static"));
        if emulator.is_file() {
            return Ok(Emulation::Inject(emulator));
        }
        Err(EmulationError::NoEmulator {
            platform: rbuild_solver_platform(platform),
            emulator: emulator.display().to_string(),
            qemu_arch: qemu_arch.into(),
        })
    }

    fn runs_natively(&self, architecture: &str) -> bool {
        if host_architecture() == architecture {
            return true;
        }
        let Some(program) = probe_program(architecture) else { return false };
        let path = self.probe_dir.join(format!("probe-{architecture}"));
        let written = (|| -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::write(&path, program)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        })();
        let ran = written.is_ok()
            && std::process::Command::new(&path)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        let _ = std::fs::remove_file(&path);
        ran
    }

    /// A registered, enabled handler named `qemu-<arch>` with the fix-binary flag.
    fn has_fix_binary_handler(&self, qemu_arch: &str) -> bool {
        let Ok(text) = std::fs::read_to_string(self.binfmt_dir.join(format!("qemu-{qemu_arch}"))) else {
            return false;
        };
        let enabled = text.lines().next().is_some_and(|l| l.trim() == "enabled");
        let fixed = text.lines().any(|l| l.strip_prefix("flags:").is_some_and(|f| f.trim().contains('F')));
        enabled && fixed
    }
}

fn rbuild_solver_platform(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// This machine's architecture in OCI's names.
fn host_architecture() -> String {
    Platform::host().architecture
}

/// QEMU's name for an OCI architecture (`qemu-<name>-static`).
pub fn qemu_arch(architecture: &str) -> Option<&'static str> {
    Some(match architecture {
        "amd64" => "x86_64",
        "386" => "i386",
        "arm64" => "aarch64",
        "arm" => "arm",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "mips64le" => "mips64el",
        "mips64" => "mips64",
        "loong64" => "loongarch64",
        _ => return None,
    })
}

/// A minimal static program that exits 0, for architectures a kernel of another may run natively: i386 (on
/// amd64 kernels with IA-32 emulation). Others are never run natively by a kernel of another architecture.
fn probe_program(architecture: &str) -> Option<Vec<u8>> {
    if architecture != "386" {
        return None;
    }
    // An ELF32 header, one PT_LOAD program header mapping the file at 0x08048000, and the code
    // `mov eax, 1; xor ebx, ebx; int 0x80` (exit(0)).
    let code: &[u8] = &[0xb8, 0x01, 0x00, 0x00, 0x00, 0x31, 0xdb, 0xcd, 0x80];
    let base: u32 = 0x0804_8000;
    let (ehsize, phsize) = (52u16, 32u16);
    let entry = base + u32::from(ehsize) + u32::from(phsize);
    let total = u32::from(ehsize) + u32::from(phsize) + code.len() as u32;
    let mut elf = Vec::with_capacity(total as usize);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: executable
    elf.extend_from_slice(&3u16.to_le_bytes()); // e_machine: EM_386
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&entry.to_le_bytes()); // e_entry
    elf.extend_from_slice(&u32::from(ehsize).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&ehsize.to_le_bytes());
    elf.extend_from_slice(&phsize.to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&0u32.to_le_bytes()); // p_offset
    elf.extend_from_slice(&base.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&base.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&total.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&total.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: r-x
    elf.extend_from_slice(&0x1000u32.to_le_bytes()); // p_align
    elf.extend_from_slice(code);
    Some(elf)
}

/// The line added to the output of a step that failed under the injected `emulator` because a program it started
/// could not run (the kernel, with no handler for its architecture, refuses it: `Exec format error`); None when the
/// output does not say so.
pub fn child_exec_hint(tail: &[String], emulator: &Path, platform: &Platform) -> Option<String> {
    if !tail.iter().any(|l| l.to_ascii_lowercase().contains("exec format error")) {
        return None;
    }
    let qemu = qemu_arch(&platform.architecture).unwrap_or(&platform.architecture);
    Some(format!(
        "rbuild: this {} step ran under the injected emulator {}, which runs only the step's first process; the \
         programs it starts need a binfmt_misc handler for {qemu} with the F (fix-binary) flag (Debian: \
         qemu-user-static and binfmt-support, or register /usr/lib/binfmt.d/qemu-{qemu}.conf with the static \
         emulator and flags F)",
        rbuild_solver_platform(platform),
        emulator.display()
    ))
}

/// The step's arguments with the injected emulator first: `emulator -0 argv0 /path/of/program args...`. The
/// program is found on the step's `PATH` in `rootfs` when it is a bare name (runc would look it up; QEMU does not).
pub fn wrap_args(args: &[String], env: &[String], rootfs: &Path) -> Vec<String> {
    let Some(first) = args.first() else { return Vec::new() };
    let program = if first.contains('/') {
        first.clone()
    } else {
        let path = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{}/{first}", d.trim_end_matches('/')))
            .find(|p| std::fs::symlink_metadata(rootfs.join(p.trim_start_matches('/'))).is_ok())
            .unwrap_or_else(|| first.clone())
    };
    let mut out = vec![EMULATOR_PATH.to_string(), "-0".into(), first.clone(), program];
    out.extend_from_slice(&args[1..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(dir: &Path) -> Host {
        Host { binfmt_dir: dir.join("binfmt"), emulator_dir: dir.join("bin"), probe_dir: dir.to_path_buf() }
    }

    fn arm64() -> Platform {
        Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) }
    }

    #[test]
    fn the_machines_own_platform_is_native() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(host(dir.path()).emulation(&Platform::host()), Ok(Emulation::None));
    }

    #[test]
    fn a_fix_binary_handler_wins_over_injection_and_neither_is_an_error_naming_the_package() {
        if host_architecture() == "arm64" {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let e = h.emulation(&arm64()).unwrap_err().to_string();
        assert!(
            e.contains("qemu-user-static") && e.contains("qemu-aarch64-static") && e.contains("F (fix-binary)"),
            "{e}"
        );
        std::fs::create_dir_all(&h.emulator_dir).unwrap();
        std::fs::write(h.emulator_dir.join("qemu-aarch64-static"), b"").unwrap();
        assert_eq!(h.emulation(&arm64()), Ok(Emulation::Inject(h.emulator_dir.join("qemu-aarch64-static"))));
        std::fs::create_dir_all(&h.binfmt_dir).unwrap();
        // Without the F flag the handler's path would be looked up inside the container: not enough.
        std::fs::write(
            h.binfmt_dir.join("qemu-aarch64"),
            "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OC\n",
        )
        .unwrap();
        assert!(matches!(h.emulation(&arm64()), Ok(Emulation::Inject(_))));
        std::fs::write(
            h.binfmt_dir.join("qemu-aarch64"),
            "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OCF\n",
        )
        .unwrap();
        assert_eq!(h.emulation(&arm64()), Ok(Emulation::None));
        std::fs::write(h.binfmt_dir.join("qemu-aarch64"), "disabled\nflags: OCF\n").unwrap();
        assert!(matches!(h.emulation(&arm64()), Ok(Emulation::Inject(_))));
    }

    /// linux/386 on an amd64 kernel with IA-32 support runs without emulation: the probe finds it.
    #[test]
    fn i386_is_probed() {
        if host_architecture() != "amd64" {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let ia32 = std::path::Path::new("/proc/sys/abi/ia32_emulation"); // absent on kernels that always have it
        let expected = std::fs::read_to_string(ia32).map_or(true, |v| v.trim() != "0");
        let p = Platform { os: "linux".into(), architecture: "386".into(), variant: None };
        assert_eq!(h.runs_natively("386"), expected);
        if expected {
            assert_eq!(h.emulation(&p), Ok(Emulation::None));
        }
    }

    #[test]
    fn injected_emulator_runs_the_program_found_on_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", dir.path().join("bin/sh")).unwrap();
        let args: Vec<String> = ["sh", "-c", "uname -m"].map(String::from).to_vec();
        let wrapped = wrap_args(&args, &["PATH=/usr/bin:/bin".into()], dir.path());
        assert_eq!(wrapped, [EMULATOR_PATH, "-0", "sh", "/bin/sh", "-c", "uname -m"]);
        let abs: Vec<String> = ["/bin/busybox", "true"].map(String::from).to_vec();
        assert_eq!(wrap_args(&abs, &[], dir.path()), [EMULATOR_PATH, "-0", "/bin/busybox", "/bin/busybox", "true"]);
    }

    #[test]
    fn a_child_that_cannot_run_under_injection_gets_a_hint() {
        let emulator = Path::new("/usr/bin/qemu-aarch64-static");
        let tail = vec!["/bin/sh: /bin/bb2: Exec format error".to_string()];
        let hint = child_exec_hint(&tail, emulator, &arm64()).unwrap();
        assert!(hint.contains("qemu-aarch64-static") && hint.contains("handler for aarch64"), "{hint}");
        assert!(hint.contains("linux/arm64/v8"), "{hint}");
        assert_eq!(child_exec_hint(&["exit 1".to_string()], emulator, &arm64()), None);
    }
}
