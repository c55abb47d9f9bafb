//! Build checks: for every rule, a Dockerfile that triggers it (with BuildKit's message text, from
//! `frontend/dockerfile/linter/ruleset.go`) and one that does not. The texts that BuildKit 0.25 also has are
//! compared against the running reference in `cli/tests/checks.rs`.

use rbuild_frontend::lint::{Check, rules};
use rbuild_frontend::{CheckReport, ConvertOptions, ImageResolver, NoCache, ResolvedImage};
use rbuild_types::Digest;
use rbuild_types::oci::{ContainerConfig, ImageConfig, Platform};

/// `base` is linux/amd64 with a PATH; `armbase` is linux/arm64; `shellbase` sets a SHELL.
struct Resolver;

impl ImageResolver for Resolver {
    fn resolve(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<ResolvedImage, Box<dyn std::error::Error + Send + Sync>> {
        let (arch, shell) = match reference.split(':').next().unwrap_or_default() {
            "base" => ("amd64", None),
            "armbase" => ("arm64", None),
            "shellbase" => ("amd64", Some(vec!["/bin/bash".to_string(), "-c".to_string()])),
            other => return Err(format!("{other}: not found").into()),
        };
        let config = ContainerConfig { env: Some(vec!["PATH=/usr/bin:/bin".into()]), shell, ..Default::default() };
        Ok(ResolvedImage {
            reference: reference.to_string(),
            digest: Digest::of(reference.as_bytes()),
            config: ImageConfig { architecture: arch.into(), os: "linux".into(), config, ..Default::default() },
        })
    }
}

fn opts(build_args: &[(&str, &str)]) -> ConvertOptions {
    ConvertOptions {
        build_args: build_args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        target: None,
        platform: Platform { architecture: "amd64".into(), os: "linux".into(), variant: None },
        no_cache: NoCache::None,
        context_excludes: vec!["*.secret".into(), "build/".into()],
        named_contexts: Default::default(),
        build_platform: Platform { architecture: "amd64".into(), os: "linux".into(), variant: None },
    }
}

fn run(src: &str, build_args: &[(&str, &str)]) -> CheckReport {
    let ast = rbuild_frontend::parser::parse(src).expect("test Dockerfiles parse");
    rbuild_frontend::check(&ast, &opts(build_args), &Resolver)
}

/// The short forms of the findings of `rule` for `src`.
fn found(rule: &str, src: &str) -> Vec<String> {
    let r = run(src, &[]);
    // `ARG IMAGE` with no default fails to build unless a build argument gives it: expected for that rule.
    assert!(r.error.is_none() || rule == "InvalidDefaultArgInFrom", "{src}: {:?}", r.error);
    r.checks.iter().filter(|c| c.rule.name == rule).map(|c| c.short()).collect()
}

/// (rule, Dockerfile that triggers it, the expected findings, Dockerfile that does not).
const CASES: &[(&str, &str, &[&str], &str)] = &[
    (
        "StageNameCasing",
        "FROM base AS Builder\n",
        &["StageNameCasing: Stage name 'Builder' should be lowercase (line 1)"],
        "FROM base AS builder\n",
    ),
    (
        "FromAsCasing",
        "FROM base as builder\n",
        &["FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)"],
        "from base as builder\n",
    ),
    (
        "NoEmptyContinuation",
        "FROM base\nRUN echo a \\\n\n  b\n",
        &["NoEmptyContinuation: Empty continuation line (line 4)"],
        "FROM base\nRUN echo a \\\n  b\n",
    ),
    (
        "ConsistentInstructionCasing",
        "FROM base\nrun echo a\nRUN echo b\n",
        &[
            "ConsistentInstructionCasing: Command 'run' should match the case of the command majority (uppercase) (line 2)",
        ],
        "from base\nrun echo a\n",
    ),
    (
        "DuplicateStageName",
        "FROM base AS a\nFROM base AS a\n",
        &["DuplicateStageName: Duplicate stage name \"a\", stage names should be unique (line 2)"],
        "FROM base AS a\nFROM base AS b\n",
    ),
    (
        "ReservedStageName",
        "FROM base AS scratch\n",
        &["ReservedStageName: Stage name should not use the same name as reserved stage \"scratch\" (line 1)"],
        "FROM base AS scratchy\n",
    ),
    (
        "JSONArgsRecommended",
        "FROM base\nCMD echo hi\nENTRYPOINT run.sh\n",
        &[
            "JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 2)",
            "JSONArgsRecommended: JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related to OS signals (line 3)",
        ],
        "FROM base\nCMD [\"echo\", \"hi\"]\nFROM shellbase\nCMD echo hi\n",
    ),
    (
        "MaintainerDeprecated",
        "FROM base\nMAINTAINER me\n",
        &["MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 2)"],
        "FROM base\nLABEL org.opencontainers.image.authors=me\n",
    ),
    (
        "UndefinedArgInFrom",
        "ARG VERSION=1\nFROM base:$VERSON\n",
        &["UndefinedArgInFrom: FROM argument 'VERSON' is not declared (did you mean VERSION?) (line 2)"],
        "ARG VERSION=latest\nFROM base:$VERSION\nFROM --platform=$BUILDPLATFORM base\n",
    ),
    (
        "WorkdirRelativePath",
        "FROM base\nWORKDIR app\n",
        &[
            "WorkdirRelativePath: Relative workdir \"app\" can have unexpected results if the base image changes (line 2)",
        ],
        "FROM base AS a\nWORKDIR /app\nFROM a\nWORKDIR sub\n",
    ),
    (
        "UndefinedVar",
        "FROM base\nENV PATH=$PTH:/x\nCOPY $SRC /dst\n",
        &[
            "UndefinedVar: Usage of undefined variable '$PTH' (did you mean $PATH?) (line 2)",
            "UndefinedVar: Usage of undefined variable '$SRC' (line 3)",
        ],
        "FROM base\nARG SRC\nENV PATH=$PATH:/x\nCOPY $SRC /dst\nRUN echo $NOT_CHECKED_IN_RUN\n",
    ),
    (
        "MultipleInstructionsDisallowed",
        "FROM base\nCMD [\"a\"]\nCMD [\"b\"]\nHEALTHCHECK NONE\nHEALTHCHECK NONE\n",
        &[
            "MultipleInstructionsDisallowed: Multiple CMD instructions should not be used in the same stage because only the last one will be used (line 2)",
            "MultipleInstructionsDisallowed: Multiple HEALTHCHECK instructions should not be used in the same stage because only the last one will be used (line 4)",
        ],
        "FROM base AS a\nCMD [\"a\"]\nFROM a\nCMD [\"b\"]\n",
    ),
    (
        "LegacyKeyValueFormat",
        "FROM base\nENV A 1\nLABEL b 2\n",
        &[
            "LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format (line 2)",
            "LegacyKeyValueFormat: \"LABEL key=value\" should be used instead of legacy \"LABEL key value\" format (line 3)",
        ],
        "FROM base\nENV A=1\nLABEL b=2\n",
    ),
    (
        "InvalidBaseImagePlatform",
        "FROM armbase\n",
        &[
            "InvalidBaseImagePlatform: Base image armbase was pulled with platform \"linux/arm64\", expected \"linux/amd64\" for current build (line 1)",
        ],
        "FROM base\n",
    ),
    (
        "RedundantTargetPlatform",
        "FROM --platform=$TARGETPLATFORM base\n",
        &[
            "RedundantTargetPlatform: Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior (line 1)",
        ],
        "FROM --platform=$BUILDPLATFORM base\n",
    ),
    (
        "SecretsUsedInArgOrEnv",
        "FROM base\nARG GITHUB_TOKEN\nENV DB_PASSWORD=x\n",
        &[
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ARG \"GITHUB_TOKEN\") (line 2)",
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ENV \"DB_PASSWORD\") (line 3)",
        ],
        "FROM base\nARG PUBLIC_KEY\nENV KEYBOARD=x\n",
    ),
    (
        "InvalidDefaultArgInFrom",
        "ARG IMAGE\nFROM $IMAGE\n",
        &["InvalidDefaultArgInFrom: Default value for ARG $IMAGE results in empty or invalid base image name (line 2)"],
        "ARG IMAGE=base\nFROM $IMAGE\n",
    ),
    (
        "FromPlatformFlagConstDisallowed",
        "FROM --platform=linux/amd64 base AS build\n",
        &[
            "FromPlatformFlagConstDisallowed: FROM --platform flag should not use constant value \"linux/amd64\" (line 1)",
        ],
        "FROM --platform=linux/amd64 base AS build-amd64\n",
    ),
    (
        "CopyIgnoredFile",
        "FROM base\nCOPY app.secret /\nADD build/out /\n",
        &[
            "CopyIgnoredFile: Attempting to Copy file \"app.secret\" that is excluded by .dockerignore (line 2)",
            "CopyIgnoredFile: Attempting to Add file \"build/out\" that is excluded by .dockerignore (line 3)",
        ],
        "FROM base\nCOPY app.txt /\nCOPY --from=base app.secret /\n",
    ),
    (
        "ExposeProtoCasing",
        "FROM base\nEXPOSE 80/TCP\n",
        &["ExposeProtoCasing: Defined protocol '80/TCP' in EXPOSE instruction should be lowercase (line 2)"],
        "FROM base\nEXPOSE 80/tcp 53/udp\n",
    ),
    (
        "ExposeInvalidFormat",
        "FROM base\nEXPOSE 127.0.0.1:80:80 8080:80\n",
        &[
            "ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '127.0.0.1:80:80' (line 2)",
            "ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '8080:80' (line 2)",
        ],
        "FROM base\nEXPOSE 80\n",
    ),
];

#[test]
fn every_rule_triggers_and_stays_quiet_with_buildkits_texts() {
    let covered: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    for rule in rules::ALL {
        assert!(covered.contains(&rule.name), "no case for {}", rule.name);
    }
    for (rule, bad, expected, good) in CASES {
        assert_eq!(found(rule, bad), *expected, "{rule}: {bad}");
        assert_eq!(found(rule, good), Vec::<String>::new(), "{rule}: {good}");
    }
}

#[test]
fn check_directive_and_build_arg_select_rules() {
    let src = "FROM base AS Bad\nMAINTAINER me\n";
    let names = |r: &CheckReport| r.checks.iter().map(|c| c.rule.name).collect::<Vec<_>>();
    assert_eq!(names(&run(src, &[])), ["StageNameCasing", "MaintainerDeprecated"]);
    let skipped = run(&format!("# check=skip=StageNameCasing\n{src}"), &[]);
    assert_eq!(names(&skipped), ["MaintainerDeprecated"]);
    assert!(run(&format!("# check=skip=all\n{src}"), &[]).checks.is_empty());
    // The build argument replaces the directive.
    let r = run(&format!("# check=skip=all\n{src}"), &[("BUILDKIT_DOCKERFILE_CHECK", "skip=MaintainerDeprecated")]);
    assert_eq!(names(&r), ["StageNameCasing"]);
    let e = run(&format!("# check=error=true\n{src}"), &[]).error.expect("error=true fails");
    assert_eq!(e.message, "lint violation found for rules: StageNameCasing, MaintainerDeprecated");
    let e = run(src, &[("BUILDKIT_DOCKERFILE_CHECK", "bogus")]).error.expect("bad options fail");
    assert!(e.message.contains("BUILDKIT_DOCKERFILE_CHECK"), "{}", e.message);
}

#[test]
fn a_normal_build_reports_dispatch_rules_only_for_the_stages_it_builds() {
    let src = "FROM base AS unused\nWORKDIR rel\nFROM base AS Final\nCMD echo hi\n";
    let ast = rbuild_frontend::parser::parse(src).unwrap();
    let plan = rbuild_frontend::convert(&ast, &opts(&[]), &Resolver).unwrap();
    let names: Vec<&str> = plan.checks.iter().map(|c| c.rule.name).collect();
    assert_eq!(names, ["StageNameCasing", "JSONArgsRecommended"]);
    // `--call check` converts every stage.
    let names: Vec<&str> = run(src, &[]).checks.iter().map(|c| c.rule.name).collect();
    assert!(names.contains(&"WorkdirRelativePath"), "{names:?}");
}

#[test]
fn check_reports_findings_before_an_error() {
    let r = run("FROM base AS Bad\nFROM nosuchimage\n", &[]);
    assert_eq!(r.checks.len(), 1);
    let e = r.error.expect("unknown image");
    assert!(e.message.contains("nosuchimage"), "{}", e.message);
}

/// A Dockerfile of thousands of ENV lines and FROM lines that each use an undefined variable: every one is
/// reported, without "did you mean" among thousands of names (which would make checking quadratic).
#[test]
fn many_undefined_variables_are_reported_without_quadratic_suggestions() {
    let mut src = String::new();
    for i in 0..3000 {
        src.push_str(&format!("ARG A{i}=x\n"));
    }
    src.push_str("FROM base AS s0\n");
    for i in 0..3000 {
        src.push_str(&format!("ENV VAR{i}=${{VAR{}}}x\n", i + 1));
    }
    for i in 1..2000 {
        src.push_str(&format!("FROM base:$A{i}$B{i} AS s{i}\n"));
    }
    let r = run(&src, &[]);
    let undefined: Vec<&Check> = r.checks.iter().filter(|c| c.rule.name == "UndefinedVar").collect();
    assert_eq!(undefined.len(), 3000);
    // Early on the stage has few names, and VAR1 is close to VAR0; later it has too many to compare against.
    assert_eq!(undefined[1].message, "Usage of undefined variable '$VAR2' (did you mean $VAR0?)");
    assert!(undefined[300..].iter().all(|c| !c.message.contains("did you mean")), "{:?}", undefined[300]);
    let from: Vec<&Check> = r.checks.iter().filter(|c| c.rule.name == "UndefinedArgInFrom").collect();
    assert_eq!(from.len(), 1999);
    assert_eq!(from[0].message, "FROM argument 'B1' is not declared");
}
