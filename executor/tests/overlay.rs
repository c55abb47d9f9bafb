//! Real overlayfs mounts (root only).

use std::path::PathBuf;

use rbuild_executor::overlay::{MAX_LEGACY_OPTIONS, mount_overlay};

use crate::support::{TestDir, privileged};

#[test]
fn layers_merge_top_most_first_and_writes_go_to_upper() {
    if !privileged("layers_merge_top_most_first_and_writes_go_to_upper") {
        return;
    }
    let t = TestDir::new("ovl-order");
    for (layer, content) in [("l1", "bottom"), ("l2", "top")] {
        std::fs::create_dir_all(t.path(layer)).expect("mkdir");
        std::fs::write(t.path(layer).join("shared"), content).expect("write");
        std::fs::write(t.path(layer).join(format!("only-{layer}")), layer).expect("write");
    }
    let mount = mount_overlay(&[t.path("l2"), t.path("l1")], &t.path("upper"), &t.path("work"), &t.path("merged"))
        .expect("mount");
    assert_eq!(mount.target(), t.path("merged"));
    let merged = t.path("merged");
    assert_eq!(std::fs::read_to_string(merged.join("shared")).expect("read"), "top");
    assert!(merged.join("only-l1").is_file() && merged.join("only-l2").is_file());
    std::fs::write(merged.join("new"), "x").expect("write");
    mount.unmount().expect("unmount");
    assert_eq!(std::fs::read_to_string(t.path("upper/new")).expect("upper"), "x");
    assert!(!merged.join("shared").exists(), "unmounted");
    assert!(!t.path("l2/new").exists(), "lowers untouched");
}

#[test]
fn zero_lowers_use_a_temporary_empty_lower() {
    if !privileged("zero_lowers_use_a_temporary_empty_lower") {
        return;
    }
    let t = TestDir::new("ovl-empty");
    let mount = mount_overlay(&[], &t.path("upper"), &t.path("work"), &t.path("merged")).expect("mount");
    assert_eq!(std::fs::read_dir(t.path("merged")).expect("ls").count(), 0);
    std::fs::write(t.path("merged/f"), "1").expect("write");
    drop(mount); // the guard unmounts
    assert!(t.path("upper/f").is_file());
    assert!(!t.path("merged/f").exists());
    let leftovers: Vec<_> = std::fs::read_dir(t.dir.path())
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".rbuild-empty-lower-"))
        .collect();
    assert!(leftovers.is_empty(), "empty lower removed: {leftovers:?}");
}

/// More lower paths than fit into one page of `mount(2)` options.
#[test]
fn many_long_lower_paths_beyond_one_page() {
    if !privileged("many_long_lower_paths_beyond_one_page") {
        return;
    }
    let t = TestDir::new("ovl-many");
    let long = "d".repeat(120);
    let lowers: Vec<PathBuf> = (0..60).map(|i| t.path(&format!("layers/{long}-{i:03}"))).collect();
    let total: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(total > MAX_LEGACY_OPTIONS, "the test must exceed a page ({total} bytes)");
    for (i, lower) in lowers.iter().enumerate() {
        std::fs::create_dir_all(lower).expect("mkdir");
        std::fs::write(lower.join(format!("f{i}")), i.to_string()).expect("write");
        std::fs::write(lower.join("who"), i.to_string()).expect("write");
    }
    let mount = mount_overlay(&lowers, &t.path("upper"), &t.path("work"), &t.path("merged")).expect("mount");
    assert_eq!(std::fs::read_to_string(t.path("merged/who")).expect("read"), "0", "first lower is on top");
    assert_eq!(std::fs::read_to_string(t.path("merged/f59")).expect("read"), "59");
    mount.unmount().expect("unmount");
}

/// Regression (issue 11, item 10): two steps that add the same files have one snapshot, which then appeared twice
/// in lowerdir, and overlayfs refused the mount ("Too many levels of symbolic links").
#[test]
fn a_layer_repeated_in_the_stack_mounts_once_at_its_top_most_place() {
    if !privileged("a_layer_repeated_in_the_stack_mounts_once_at_its_top_most_place") {
        return;
    }
    let t = TestDir::new("ovl-repeat");
    for (layer, content) in [("same", "same"), ("mid", "mid")] {
        std::fs::create_dir_all(t.path(layer)).expect("mkdir");
        std::fs::write(t.path(layer).join("shared"), content).expect("write");
    }
    let lowers = [t.path("same"), t.path("mid"), t.path("same")];
    let mount = mount_overlay(&lowers, &t.path("upper"), &t.path("work"), &t.path("merged")).expect("mount");
    assert_eq!(std::fs::read_to_string(t.path("merged/shared")).expect("read"), "same", "the top-most copy wins");
    mount.unmount().expect("unmount");
}
