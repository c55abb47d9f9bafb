//! Dockerfiles written to hurt the builder (issue 9): deep nesting, long chains, exponential expansion, bad
//! platforms. Each must be an error at its line or a plan, never a crash, a hang or gigabytes of memory.

use crate::convert::{convert, convert_with, history, opts};
use rbuild_frontend::{ConvertError, ImageResolver, ResolvedImage};
use rbuild_types::Digest;
use rbuild_types::oci::{ContainerConfig, ImageConfig, Platform};
use std::time::{Duration, Instant};

/// The stack conversion must fit in: the 2 MiB of a tokio blocking thread, where the CLI runs it, halved.
const STACK: usize = 1 << 20;

/// Runs `f` on a thread with a small stack ([`STACK`]), so that a test fails (aborts) if conversion recursed once
/// per stage or per nesting level instead of being bounded.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("spawning a test thread")
        .join()
        .expect("the conversion thread panicked")
}

fn err(src: &str) -> ConvertError {
    let src = src.to_string();
    on_small_stack(move || convert_with(&src, &opts(&[], None)).expect_err("this Dockerfile must be refused"))
}

fn line(e: &ConvertError) -> Option<usize> {
    e.location.as_ref().map(|l| l.start_line)
}

/// Issue 9 item 6: 1,000 chained `FROM sN AS sN+1` stages overflowed the stack (exit 134).
#[test]
fn a_thousand_chained_stages_convert_without_recursion() {
    for n in [1_000, 5_000] {
        let mut src = String::from("FROM base AS s0\nENV A=0\n");
        for i in 0..n {
            src.push_str(&format!("FROM s{i} AS s{}\nCOPY --from=s{i} /a /a{i}\n", i + 1));
        }
        let plan = on_small_stack(move || convert_with(&src, &opts(&[], None)));
        let plan = plan.unwrap_or_else(|e| panic!("{n} stages: {} at {:?}", e.message, e.location));
        assert_eq!(plan.config.config.env.as_deref().map(|e| e.contains(&"A=0".to_string())), Some(true));
    }
}

/// Issue 9 item 6: `${X:-` nested 3,000 deep overflowed the stack; now an error naming its line.
#[test]
fn deeply_nested_expansion_is_an_error_at_its_line() {
    let deep = format!("FROM base\nENV A=1\nENV B={}x{}\n", "${X:-".repeat(3_000), "}".repeat(3_000));
    let e = err(&deep);
    assert_eq!(line(&e), Some(3));
    assert!(e.message.contains("nested more than 64 levels deep"), "{}", e.message);
    assert!(e.message.len() < 600, "the word is shortened in the message: {} bytes", e.message.len());
    // The same in a FROM line, a COPY --from and a platform.
    let deep_word = format!("{}x{}", "${X:-".repeat(3_000), "}".repeat(3_000));
    for src in [
        format!("FROM {deep_word}\n"),
        format!("FROM base\nCOPY --from={deep_word} /a /b\n"),
        format!("FROM --platform={deep_word} base\n"),
        format!("FROM base\nRUN --mount=type=bind,target={deep_word} true\n"),
        format!("FROM base\nEXPOSE {deep_word}\n"),
    ] {
        let e = err(&src);
        assert!(e.message.contains("nested more than"), "{src:.40}: {}", e.message);
    }
}

/// Base images whose ONBUILD trigger copies from a stage: `trigN` has `COPY --from=sM /a /a` with M = N - 1.
struct Triggers;

impl ImageResolver for Triggers {
    fn resolve(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<ResolvedImage, Box<dyn std::error::Error + Send + Sync>> {
        let n: usize = reference.strip_prefix("trig").and_then(|n| n.parse().ok()).ok_or("unknown image")?;
        let on_build = (n > 0).then(|| vec![format!("COPY --from=s{} /a /a", n - 1)]);
        Ok(ResolvedImage {
            reference: reference.to_string(),
            digest: Digest::of(reference.as_bytes()),
            config: ImageConfig { config: ContainerConfig { on_build, ..Default::default() }, ..Default::default() },
        })
    }
}

/// Issue 9 item 6: stage references known only while converting (a base image's ONBUILD trigger copying from a
/// stage) nest, but boundedly: an error, not a stack overflow.
#[test]
fn late_stage_references_nest_boundedly() {
    let chain = |n: usize| (0..n).map(|i| format!("FROM trig{i} AS s{i}\n")).collect::<String>();
    let src = chain(200);
    let e = on_small_stack(move || {
        let ast = rbuild_frontend::parser::parse(&src).expect("parses");
        rbuild_frontend::convert(&ast, &opts(&[], None), &Triggers).expect_err("too deep")
    });
    assert!(e.message.contains("more than 16 levels deep"), "{}", e.message);
    // A short chain of the same kind converts.
    let ast = rbuild_frontend::parser::parse(&chain(10)).expect("parses");
    assert!(rbuild_frontend::convert(&ast, &opts(&[], None), &Triggers).is_ok());
}

/// Issue 9 item 7: 10,000 ENV lines took 13 s and 20,000 took 67 s (every instruction copied the environment).
/// Linear now: 40,000 ENV plus 20,000 ARG lines convert in well under the time one copy per line took.
#[test]
fn many_env_and_arg_lines_convert_in_linear_time() {
    let mut src = String::from("FROM base\n");
    for i in 0..20_000 {
        src.push_str(&format!("ENV V{i}=value{i}\nENV W=$V{i}\nARG A{i}=$W\n"));
    }
    src.push_str("RUN echo $A19999\n");
    let start = Instant::now();
    let plan = convert(&src);
    let took = start.elapsed();
    // Alone this takes ~3 s in a debug build; the quadratic code took minutes (67 s for 20,000 ENV in release).
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let env = plan.config.config.env.as_deref().unwrap_or_default();
    assert_eq!(env.len(), 1 + 20_000 + 1, "PATH, V0..V19999 and W");
    assert_eq!(env.iter().find(|e| e.starts_with("W=")).map(String::as_str), Some("W=value19999"));
    let run = history(&plan).pop().unwrap_or_default();
    assert!(run.starts_with("RUN |20000 A0=value0 A1=value1 "), "{:.60}", run);
}

/// Issue 9 item 7: thirty lines of `ARG A{n+1}=${An}${An}` reached 2 GB; the line that goes over 1 MiB fails.
#[test]
fn exponential_expansion_is_stopped_at_its_line() {
    let mut src = String::from("FROM base\nARG A0=xxxxxxxxxxxxxxxx\n");
    for i in 0..30 {
        src.push_str(&format!("ARG A{}=${{A{i}}}${{A{i}}}\n", i + 1));
    }
    let e = err(&src);
    // A16 is 16 * 2^16 = 1 MiB: A17 would be 2 MiB.
    assert_eq!(line(&e), Some(2 + 17), "{}", e.message);
    assert!(e.message.contains("larger than 1048576 bytes"), "{}", e.message);
}

/// Issue 9 item 7: a 512 KiB value copied into thousands of ENV lines (each copy under the 1 MiB word limit)
/// must not add up to gigabytes either.
#[test]
fn copies_of_a_large_value_hit_the_total_budget() {
    let mut src = String::from("FROM base\nARG A0=xxxxxxxxxxxxxxxx\n");
    for i in 0..15 {
        src.push_str(&format!("ARG A{}=${{A{i}}}${{A{i}}}\n", i + 1));
    }
    let lines = src.lines().count();
    for i in 0..10_000 {
        src.push_str(&format!("ENV E{i}=$A15\n"));
    }
    let e = err(&src);
    assert!(e.message.contains("exceed 256 MiB"), "{}", e.message);
    let at = line(&e).unwrap_or(0);
    assert!(at > lines && at < lines + 600, "fails at the ENV that goes over, line {at}");
    // The same value copied into a RUN environment many times.
    let mut runs = src.lines().take(lines).collect::<Vec<_>>().join("\n");
    runs.push_str("\nENV BIG=$A15\n");
    for _ in 0..2_000 {
        runs.push_str("RUN true\n");
    }
    assert!(err(&runs).message.contains("exceed 256 MiB"));
}

/// Issue 9 item 12: bad platforms were accepted (only compared as strings for a warning).
#[test]
fn bad_platforms_are_errors_naming_the_line() {
    for (p, want) in [
        ("foo", "unknown operating system or architecture"),
        ("linux/amd64/../../x", "invalid component"),
        ("linux/", "invalid component"),
        ("linux/amd64,linux/arm64", "invalid component"),
        ("a/b/c/d", "cannot parse platform specifier"),
        ("$NOPE", "empty platform value from expression $NOPE"),
    ] {
        let e = err(&format!("FROM base\nFROM --platform={p} base AS x\nRUN true\n"));
        assert_eq!(line(&e), Some(2), "{p}: {}", e.message);
        assert!(e.message.contains(want), "{p}: {}", e.message);
    }
    // Valid ones build; aliases of the build platform are no difference worth a warning.
    for p in ["linux/amd64", "linux/x86_64", "$BUILDPLATFORM", "$TARGETOS/$TARGETARCH"] {
        let plan = convert(&format!("FROM --platform={p} base\n"));
        assert!(plan.warnings.is_empty(), "{p}: {:?}", plan.warnings);
    }
    // Another platform is built for that platform (its RUN steps carry it, for the executor to emulate).
    let plan = convert("FROM --platform=linux/arm64 base\nRUN true\n");
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let run = plan.graph.vertices.iter().find_map(|v| match &v.op {
        rbuild_solver::Op::Exec(e) => Some(e.platform.clone()),
        _ => None,
    });
    assert_eq!(run.flatten().map(|p| format!("{}/{}", p.os, p.architecture)).as_deref(), Some("linux/arm64"));
}

/// Issue 9 item 13: BuildKit's SecretsUsedInArgOrEnv warning, with BuildKit's text.
#[test]
fn secret_names_in_arg_and_env_warn_like_buildkit() {
    let plan = convert("FROM base\nARG GITHUB_TOKEN\nENV DB_PASSWORD=x PUBLIC_KEY=y\nARG VERSION=1 api_key\n");
    assert_eq!(
        plan.checks.iter().map(|c| c.short()).collect::<Vec<_>>(),
        [
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ARG \"GITHUB_TOKEN\") (line 2)",
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ENV \"DB_PASSWORD\") (line 3)",
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ARG \"api_key\") (line 4)",
        ]
    );
    let skipped = convert("# check=skip=SecretsUsedInArgOrEnv\nFROM base\nARG TOKEN\n");
    assert!(skipped.checks.is_empty(), "{:?}", skipped.checks);
    let skipped = convert("# check=skip=all\nFROM base\nARG TOKEN\n");
    assert!(skipped.checks.is_empty(), "{:?}", skipped.checks);
    let e = err("# check=error=true\nFROM base\nARG TOKEN\n");
    assert_eq!(e.message, "lint violation found for rules: SecretsUsedInArgOrEnv");
    let e = err("# check=bogus\nFROM base\n");
    assert_eq!(line(&e), Some(1), "{}", e.message);
}
