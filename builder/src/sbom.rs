//! `--sbom`: an SPDX 2.3 document of the packages in an image's final filesystem, attached as an in-toto
//! attestation (predicate `https://spdx.dev/Document`), which `docker buildx imagetools inspect --format
//! '{{json .SBOM}}'` reads.
//!
//! Packages are read from the package managers' own records: dpkg's status file (and `status.d/`), apk's installed
//! database, Python `*.dist-info/METADATA`, npm `node_modules/**/package.json`, and the crates compiled into Rust
//! executables built with `cargo auditable` (its `.dep-v0` ELF section: zlib-compressed JSON). BuildKit runs a
//! scanner image for this; rbuild reads the same records itself, since pulling a scanner is not possible offline.
//! Reads are bounded: files over `MAX_RECORD` are skipped, an ELF's section data is read only through its section
//! header and inflated to at most `MAX_AUDIT_JSON`, and the walk stops after `MAX_ENTRIES` entries.

use rbuild_image::index::Attestation;
use std::path::Path;

pub const PREDICATE_SPDX: &str = "https://spdx.dev/Document";
/// The largest package record read.
const MAX_RECORD: u64 = 64 << 20;
/// How many filesystem entries the walk for Python, npm and Rust packages visits at most.
const MAX_ENTRIES: usize = 500_000;
/// The largest compressed `.dep-v0` section read (cargo auditable's are a few KiB).
const MAX_AUDIT_SECTION: u64 = 4 << 20;
/// The most its JSON may inflate to.
const MAX_AUDIT_JSON: u64 = 16 << 20;

/// One package found in the filesystem.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// A package URL (`pkg:deb/debian/bash@5.2?arch=amd64`).
    pub purl: String,
}

fn read_small(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_RECORD {
        return None;
    }
    std::fs::read(path).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// RFC 822-style stanzas (dpkg's status file), as field → value maps.
fn stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with([' ', '\t']) {
            // A continuation line of the previous field: not needed here.
        } else if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn field<'a>(stanza: &'a [(String, String)], name: &str) -> Option<&'a str> {
    stanza.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn dpkg(root: &Path, out: &mut Vec<Package>) {
    let mut files = vec![root.join("var/lib/dpkg/status")];
    if let Ok(dir) = std::fs::read_dir(root.join("var/lib/dpkg/status.d")) {
        files.extend(dir.flatten().map(|e| e.path()));
    }
    for file in files {
        let Some(text) = read_small(&file) else { continue };
        for s in stanzas(&text) {
            let installed = field(&s, "Status").is_none_or(|st| st.ends_with(" installed"));
            if let (Some(name), Some(version), true) = (field(&s, "Package"), field(&s, "Version"), installed) {
                let arch = field(&s, "Architecture").unwrap_or("all");
                let purl = format!("pkg:deb/debian/{name}@{version}?arch={arch}");
                out.push(Package { name: name.into(), version: version.into(), purl });
            }
        }
    }
}

fn apk(root: &Path, out: &mut Vec<Package>) {
    let Some(text) = read_small(&root.join("lib/apk/db/installed")) else { return };
    for s in stanzas(&text) {
        if let (Some(name), Some(version)) = (field(&s, "P"), field(&s, "V")) {
            let arch = field(&s, "A").unwrap_or("noarch");
            let purl = format!("pkg:apk/alpine/{name}@{version}?arch={arch}");
            out.push(Package { name: name.into(), version: version.into(), purl });
        }
    }
}

/// Python distributions and npm packages, found by walking the filesystem (symlinks are not followed).
fn walk(root: &Path, out: &mut Vec<Package>) {
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            visited += 1;
            if visited > MAX_ENTRIES {
                return;
            }
            let Ok(kind) = entry.file_type() else { continue };
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if kind.is_dir() {
                if path == root.join("proc") || path == root.join("sys") {
                    continue;
                }
                if name.ends_with(".dist-info") {
                    python(&path, out);
                }
                stack.push(path);
            } else if kind.is_file() && name == "package.json" && in_node_modules(&path) {
                npm(&path, out);
            } else if kind.is_file() && is_executable(&entry) {
                rust_audit(&path, out);
            }
        }
    }
}

fn python(dist_info: &Path, out: &mut Vec<Package>) {
    let Some(text) = read_small(&dist_info.join("METADATA")) else { return };
    let head = text.split("\n\n").next().unwrap_or_default();
    let s = stanzas(head).into_iter().next().unwrap_or_default();
    if let (Some(name), Some(version)) = (field(&s, "Name"), field(&s, "Version")) {
        let purl = format!("pkg:pypi/{}@{version}", name.to_lowercase().replace('_', "-"));
        out.push(Package { name: name.into(), version: version.into(), purl });
    }
}

/// `node_modules/x/package.json` or `node_modules/@scope/x/package.json`.
fn in_node_modules(package_json: &Path) -> bool {
    let parents: Vec<String> = package_json
        .ancestors()
        .skip(2)
        .take(2)
        .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    match parents.as_slice() {
        [first, ..] if first == "node_modules" => true,
        [scope, second] => scope.starts_with('@') && second == "node_modules",
        _ => false,
    }
}

fn npm(package_json: &Path, out: &mut Vec<Package>) {
    let Some(text) = read_small(package_json) else { return };
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else { return };
    if let (Some(name), Some(version)) = (doc["name"].as_str(), doc["version"].as_str()) {
        let purl = format!("pkg:npm/{}@{version}", name.replace('@', "%40"));
        out.push(Package { name: name.into(), version: version.into(), purl });
    }
}

fn is_executable(entry: &std::fs::DirEntry) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    entry.metadata().is_ok_and(|m| m.permissions().mode() & 0o111 != 0 && m.len() >= 64)
}

/// The crates `cargo auditable` recorded in an ELF executable's `.dep-v0` section, except build-time ones (build
/// scripts and proc macros, whose code is not in the binary). Anything that is not such an ELF is skipped quietly.
fn rust_audit(path: &Path, out: &mut Vec<Package>) {
    let Some(json) = audit_json(path) else { return };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&json) else { return };
    let Some(packages) = doc["packages"].as_array() else { return };
    for p in packages {
        if p["kind"].as_str() == Some("build") {
            continue;
        }
        if let (Some(name), Some(version)) = (p["name"].as_str(), p["version"].as_str()) {
            let purl = format!("pkg:cargo/{name}@{version}");
            out.push(Package { name: name.into(), version: version.into(), purl });
        }
    }
}

/// The inflated `.dep-v0` section of the ELF at `path`: read through the section table without loading the file.
fn audit_json(path: &Path) -> Option<Vec<u8>> {
    use object::{Object as _, ObjectSection as _};
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).ok()?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).ok()?;
    if &magic != b"\x7fELF" {
        return None;
    }
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let section = elf.section_by_name(".dep-v0")?;
    if section.size() > MAX_AUDIT_SECTION {
        return None;
    }
    let compressed = section.data().ok()?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(compressed).take(MAX_AUDIT_JSON + 1).read_to_end(&mut json).ok()?;
    (json.len() as u64 <= MAX_AUDIT_JSON).then_some(json)
}

/// Every package the filesystem at `root` records, sorted, once each.
pub fn scan(root: &Path) -> Vec<Package> {
    let mut out = Vec::new();
    dpkg(root, &mut out);
    apk(root, &mut out);
    walk(root, &mut out);
    out.sort();
    out.dedup();
    out
}

/// The SBOM of the image whose config is `config`: its filesystem is unpacked into the store's temporary
/// directory, scanned, and removed.
pub(crate) fn of_image(
    store: &rbuild_cache::Store,
    config: &rbuild_types::Digest,
    created: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Attestation> {
    use anyhow::Context as _;
    let cfg: rbuild_types::oci::ImageConfig =
        serde_json::from_slice(&store.read_blob(config)?).with_context(|| format!("image config {config}"))?;
    let dir = store.tmp_dir("sbom")?;
    let scanned = rbuild_image::rootfs::unpack(store, &cfg.rootfs.diff_ids, &dir).map(|()| scan(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    let packages = scanned.with_context(|| format!("reading the filesystem of {config} for its SBOM"))?;
    Ok(document(&packages, &format!("sbom-{}", &config.hex()[..12]), created))
}

/// The SPDX 2.3 document of `packages`, as an attestation.
pub fn document(packages: &[Package], name: &str, created: chrono::DateTime<chrono::Utc>) -> Attestation {
    let listed: Vec<serde_json::Value> = packages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({
                "name": p.name,
                "SPDXID": format!("SPDXRef-Package-{i}"),
                "versionInfo": p.version,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": p.purl,
                }],
            })
        })
        .collect();
    let namespace = rbuild_types::Digest::of(format!("{name}\n{created}\n{}", packages.len()).as_bytes());
    let predicate = serde_json::json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!("https://rbuild.invalid/spdx/{}", namespace.hex()),
        "creationInfo": {
            "created": created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "creators": ["Tool: rbuild"],
        },
        "packages": listed,
    });
    Attestation { predicate_type: PREDICATE_SPDX.into(), predicate }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dpkg_apk_python_and_npm_packages() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(
            "var/lib/dpkg/status",
            "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2\nDescription: x\n more\n\n\
             Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n",
        );
        write("lib/apk/db/installed", "P:musl\nV:1.2.4-r2\nA:x86_64\n\nP:zlib\nV:1.3-r0\n");
        write(
            "usr/lib/python3/site-packages/requests-2.31.0.dist-info/METADATA",
            "Name: requests\nVersion: 2.31.0\n\nbody",
        );
        write("app/node_modules/left-pad/package.json", r#"{"name":"left-pad","version":"1.3.0"}"#);
        write("app/node_modules/@types/node/package.json", r#"{"name":"@types/node","version":"20.1.0"}"#);
        write("app/package.json", r#"{"name":"the-app","version":"0.0.1"}"#);
        let mut found: Vec<String> = scan(root).into_iter().map(|p| p.purl).collect();
        found.sort();
        assert_eq!(
            found,
            [
                "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64",
                "pkg:apk/alpine/zlib@1.3-r0?arch=noarch",
                "pkg:deb/debian/bash@5.2.15-2?arch=amd64",
                "pkg:npm/%40types/node@20.1.0",
                "pkg:npm/left-pad@1.3.0",
                "pkg:pypi/requests@2.31.0",
            ]
        );
        let doc = document(&scan(root), "x", chrono::Utc::now());
        assert_eq!(doc.predicate["spdxVersion"], "SPDX-2.3");
        assert_eq!(doc.predicate["packages"].as_array().unwrap().len(), 6);
    }

    /// `path` with a `.dep-v0` section of `section` added by objcopy, as cargo auditable adds it.
    fn with_section(dir: &Path, section: &[u8], name: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let data = dir.join(format!("{name}.section"));
        std::fs::write(&data, section).unwrap();
        let out = dir.join(name);
        let status = std::process::Command::new("objcopy")
            .arg("--add-section")
            .arg(format!(".dep-v0={}", data.display()))
            .args(["--set-section-flags", ".dep-v0=noload,readonly", "/bin/true"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
        out
    }

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(bytes).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn finds_the_crates_cargo_auditable_recorded_in_an_elf() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("usr/local/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let json = r#"{"packages":[
            {"name":"app","version":"0.1.0","source":"local","dependencies":[1,2],"root":true},
            {"name":"serde","version":"1.0.219","source":"crates.io"},
            {"name":"cc","version":"1.2.0","source":"crates.io","kind":"build"}]}"#;
        let elf = with_section(&bin, &zlib(json.as_bytes()), "app");
        // The program still runs: the section is not loaded.
        assert!(std::process::Command::new(&elf).status().unwrap().success());
        let found: Vec<String> = scan(dir.path()).into_iter().map(|p| p.purl).collect();
        assert_eq!(found, ["pkg:cargo/app@0.1.0", "pkg:cargo/serde@1.0.219"]);
    }

    /// Hostile or broken executables are skipped, never a panic: a section that is not zlib, zlib that is not
    /// JSON, a bomb that inflates past the bound, a truncated ELF, a file with only the magic.
    #[test]
    fn broken_dep_v0_sections_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        with_section(root, b"not zlib", "a");
        with_section(root, &zlib(b"{not json"), "b");
        with_section(root, &zlib(&vec![b' '; (MAX_AUDIT_JSON + 10) as usize]), "c");
        let whole = std::fs::read(with_section(root, &zlib(br#"{"packages":[]}"#), "d")).unwrap();
        std::fs::write(root.join("d"), &whole[..whole.len() / 2]).unwrap();
        std::fs::write(root.join("e"), b"\x7fELF\x02\x01\x01").unwrap();
        for f in ["d", "e"] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(root.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(scan(root), []);
    }
}
