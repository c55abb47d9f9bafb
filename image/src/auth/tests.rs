use super::*;
use std::os::unix::fs::PermissionsExt;

fn creds(u: &str, p: &str) -> Credentials {
    Credentials { username: u.into(), password: p.into() }
}

/// A fake `docker-credential-<name>` that keeps one file per server in `<dir>/store/`, as real helpers do in a
/// keychain, and logs each call.
fn fake_helper(dir: &Path, name: &str) {
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let script = format!(
        r#"#!/bin/sh
read -r input
echo "$1 $input" >> {dir}/calls.log
key=$(printf '%s' "$input" | sed 's/.*"ServerURL":"\([^"]*\)".*/\1/' | tr '/:' '__')
case "$1" in
  get)
    f={store}/$(printf '%s' "$input" | tr '/:' '__')
    if [ -f "$f" ]; then cat "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  store) printf '%s' "$input" > {store}/$key ;;
  erase)
    f={store}/$(printf '%s' "$input" | tr '/:' '__')
    if [ -f "$f" ]; then rm "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
esac
"#,
        dir = dir.display(),
        store = store.display()
    );
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn helper_path(dir: &Path) -> std::ffi::OsString {
    format!("{}:/usr/bin:/bin", dir.display()).into()
}

#[test]
fn base64_round_trips_and_rejects_garbage() {
    for input in [&b""[..], b"f", b"fo", b"foo", b"foob", b"user:pa:ss\xff"] {
        assert_eq!(base64_decode(&base64_encode(input)).as_deref(), Some(input));
    }
    assert_eq!(base64_encode(b"user:secret"), "dXNlcjpzZWNyZXQ=");
    assert_eq!(base64_decode("dXNlcjpzZWNyZXQ").unwrap(), b"user:secret", "padding is optional");
    assert_eq!(base64_decode("not base64!"), None);
    assert_eq!(base64_decode("A"), None, "a single character cannot encode a byte");
}

#[test]
fn keys_normalise_to_hosts() {
    assert_eq!(normalize_key("https://index.docker.io/v1/"), "docker.io");
    assert_eq!(normalize_key("registry-1.docker.io"), "docker.io");
    assert_eq!(normalize_key("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
    assert_eq!(normalize_key("ghcr.io"), "ghcr.io");
    assert_eq!(write_key("docker.io"), DOCKER_HUB_AUTH_KEY);
    assert_eq!(write_key("https://ghcr.io"), "ghcr.io");
}

#[test]
fn inline_auths_under_any_spelling() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"auths": {"https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"},
                     "http://10.0.0.1:5000": {"auth": "dTpwOng="},
                     "plain.example": {"username": "pu", "password": "pp"},
                     "broken.example": {"auth": "bm9jb2xvbg=="}},
            "psFormat": "table"}"#,
    )
    .unwrap();
    let config = DockerConfig::load(dir.path()).unwrap();
    assert_eq!(config.credentials("docker.io").unwrap(), Some(creds("hub", "hubpw")));
    assert_eq!(config.credentials("10.0.0.1:5000").unwrap(), Some(creds("u", "p:x")), "only the first colon splits");
    assert_eq!(config.credentials("plain.example").unwrap(), Some(creds("pu", "pp")));
    assert_eq!(config.credentials("other.example").unwrap(), None);
    let err = config.credentials("broken.example").unwrap_err();
    assert!(err.to_string().contains("broken.example"), "{err}");
}

#[test]
fn missing_file_is_empty_and_bad_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(DockerConfig::load(dir.path()).unwrap().credentials("x.example").unwrap(), None);
    std::fs::write(dir.path().join("config.json"), "{nope").unwrap();
    let err = DockerConfig::load(dir.path()).unwrap_err();
    assert!(matches!(err, AuthError::Parse { .. }) && err.to_string().contains("config.json"), "{err}");
    std::fs::write(dir.path().join("config.json"), r#"{"auths": []}"#).unwrap();
    assert!(matches!(DockerConfig::load(dir.path()).unwrap_err(), AuthError::Shape { field: "auths", .. }));
}

#[test]
fn store_and_erase_inline_keep_other_fields_and_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"auths": {"https://reg.example": {"auth": "b2xkOm9sZA=="}}, "detachKeys": "ctrl-x"}"#,
    )
    .unwrap();
    let mut config = DockerConfig::load(dir.path()).unwrap();
    config.store("reg.example", &creds("new", "pw")).unwrap();
    config.store("docker.io", &creds("hub", "h")).unwrap();
    config.save().unwrap();
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["detachKeys"], "ctrl-x");
    assert_eq!(doc["auths"]["reg.example"]["auth"], base64_encode(b"new:pw"));
    assert!(doc["auths"].get("https://reg.example").is_none(), "the old spelling is replaced: {text}");
    assert_eq!(doc["auths"][DOCKER_HUB_AUTH_KEY]["auth"], base64_encode(b"hub:h"));
    let mode = std::fs::metadata(dir.path().join("config.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut config = DockerConfig::load(dir.path()).unwrap();
    assert_eq!(config.credentials("reg.example").unwrap(), Some(creds("new", "pw")));
    assert!(config.erase("reg.example").unwrap());
    assert!(!config.erase("reg.example").unwrap(), "nothing left to erase");
    config.save().unwrap();
    assert_eq!(DockerConfig::load(dir.path()).unwrap().credentials("reg.example").unwrap(), None);
}

#[test]
fn helpers_get_store_erase_and_cred_helpers_win_over_creds_store() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    fake_helper(&bin, "fake");
    fake_helper(&bin, "other");
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"credsStore": "fake", "credHelpers": {"special.example": "other"},
            "auths": {"inline.example": {"auth": "aTpp"}}}"#,
    )
    .unwrap();
    let mut config = DockerConfig::load(dir.path()).unwrap().with_helper_path(helper_path(&bin));
    assert_eq!(config.helper_for("special.example").as_deref(), Some("other"));
    assert_eq!(config.helper_for("x.example").as_deref(), Some("fake"));
    // The helper knows nothing yet: the inline entry is the fallback.
    assert_eq!(config.credentials("inline.example").unwrap(), Some(creds("i", "i")));
    config.store("reg.example:5000", &creds("alice", "s3cret")).unwrap();
    config.store("docker.io", &creds("<token>", "idtoken")).unwrap();
    config.save().unwrap();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(config.path()).unwrap()).unwrap();
    assert_eq!(doc["auths"]["reg.example:5000"], serde_json::json!({}), "no secret inline when a helper stores it");

    let config = DockerConfig::load(dir.path()).unwrap().with_helper_path(helper_path(&bin));
    assert_eq!(config.credentials("reg.example:5000").unwrap(), Some(creds("alice", "s3cret")));
    assert_eq!(config.credentials("docker.io").unwrap(), Some(creds("", "idtoken")), "<token> is an identity token");
    assert_eq!(config.credentials("special.example").unwrap(), None, "the other helper has nothing");
    let calls = std::fs::read_to_string(bin.join("calls.log")).unwrap();
    assert!(calls.contains("get https://index.docker.io/v1/"), "Docker Hub is asked for by its URL: {calls}");

    let mut config = config;
    assert!(config.erase("reg.example:5000").unwrap());
    assert_eq!(config.credentials("reg.example:5000").unwrap(), None);
}

#[test]
fn a_missing_helper_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"credsStore": "does-not-exist"}"#).unwrap();
    let config = DockerConfig::load(dir.path()).unwrap().with_helper_path(helper_path(dir.path()));
    let err = config.credentials("reg.example").unwrap_err();
    assert!(err.to_string().contains("docker-credential-does-not-exist"), "{err}");
}
