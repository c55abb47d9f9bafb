//! BuildKit's rules (`frontend/dockerfile/linter/ruleset.go`): names, descriptions and documentation links.

/// A lint rule.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    /// BuildKit's one-line explanation of the rule.
    pub description: &'static str,
    /// BuildKit's documentation page (empty for rules without one); rbuild's output does not print it.
    pub url: &'static str,
}

pub static STAGE_NAME_CASING: Rule = Rule {
    name: "StageNameCasing",
    description: "Stage names should be lowercase",
    url: "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/",
};

pub static FROM_AS_CASING: Rule = Rule {
    name: "FromAsCasing",
    description: "The 'as' keyword should match the case of the 'from' keyword",
    url: "https://docs.docker.com/go/dockerfile/rule/from-as-casing/",
};

pub static NO_EMPTY_CONTINUATION: Rule = Rule {
    name: "NoEmptyContinuation",
    description: "Empty continuation lines will become errors in a future release",
    url: "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/",
};

pub static CONSISTENT_INSTRUCTION_CASING: Rule = Rule {
    name: "ConsistentInstructionCasing",
    description: "All commands within the Dockerfile should use the same casing (either upper or lower)",
    url: "https://docs.docker.com/go/dockerfile/rule/consistent-instruction-casing/",
};

pub static DUPLICATE_STAGE_NAME: Rule = Rule {
    name: "DuplicateStageName",
    description: "Stage names should be unique",
    url: "https://docs.docker.com/go/dockerfile/rule/duplicate-stage-name/",
};

pub static RESERVED_STAGE_NAME: Rule = Rule {
    name: "ReservedStageName",
    description: "Reserved words should not be used as stage names",
    url: "https://docs.docker.com/go/dockerfile/rule/reserved-stage-name/",
};

pub static JSON_ARGS_RECOMMENDED: Rule = Rule {
    name: "JSONArgsRecommended",
    description: "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals",
    url: "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/",
};

pub static MAINTAINER_DEPRECATED: Rule = Rule {
    name: "MaintainerDeprecated",
    description: "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
    url: "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/",
};

pub static UNDEFINED_ARG_IN_FROM: Rule = Rule {
    name: "UndefinedArgInFrom",
    description: "FROM command must use declared ARGs",
    url: "https://docs.docker.com/go/dockerfile/rule/undefined-arg-in-from/",
};

pub static WORKDIR_RELATIVE_PATH: Rule = Rule {
    name: "WorkdirRelativePath",
    description: "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes",
    url: "https://docs.docker.com/go/dockerfile/rule/workdir-relative-path/",
};

pub static UNDEFINED_VAR: Rule = Rule {
    name: "UndefinedVar",
    description: "Variables should be defined before their use",
    url: "https://docs.docker.com/go/dockerfile/rule/undefined-var/",
};

pub static MULTIPLE_INSTRUCTIONS_DISALLOWED: Rule = Rule {
    name: "MultipleInstructionsDisallowed",
    description: "Multiple instructions of the same type should not be used in the same stage",
    url: "https://docs.docker.com/go/dockerfile/rule/multiple-instructions-disallowed/",
};

pub static LEGACY_KEY_VALUE_FORMAT: Rule = Rule {
    name: "LegacyKeyValueFormat",
    description: "Legacy key/value format with whitespace separator should not be used",
    url: "https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/",
};

pub static INVALID_BASE_IMAGE_PLATFORM: Rule = Rule {
    name: "InvalidBaseImagePlatform",
    description: "Base image platform does not match expected target platform",
    url: "",
};

pub static REDUNDANT_TARGET_PLATFORM: Rule = Rule {
    name: "RedundantTargetPlatform",
    description: "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
    url: "https://docs.docker.com/go/dockerfile/rule/redundant-target-platform/",
};

pub static SECRETS_USED_IN_ARG_OR_ENV: Rule = Rule {
    name: "SecretsUsedInArgOrEnv",
    description: "Sensitive data should not be used in the ARG or ENV commands",
    url: "https://docs.docker.com/go/dockerfile/rule/secrets-used-in-arg-or-env/",
};

pub static INVALID_DEFAULT_ARG_IN_FROM: Rule = Rule {
    name: "InvalidDefaultArgInFrom",
    description: "Default value for global ARG results in an empty or invalid base image name",
    url: "https://docs.docker.com/go/dockerfile/rule/invalid-default-arg-in-from/",
};

pub static FROM_PLATFORM_FLAG_CONST_DISALLOWED: Rule = Rule {
    name: "FromPlatformFlagConstDisallowed",
    description: "FROM --platform flag should not use a constant value",
    url: "https://docs.docker.com/go/dockerfile/rule/from-platform-flag-const-disallowed/",
};

pub static COPY_IGNORED_FILE: Rule = Rule {
    name: "CopyIgnoredFile",
    description: "Attempting to Copy file that is excluded by .dockerignore",
    url: "https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/",
};

pub static EXPOSE_PROTO_CASING: Rule = Rule {
    name: "ExposeProtoCasing",
    description: "Protocol in EXPOSE instruction should be lowercase",
    url: "https://docs.docker.com/go/dockerfile/rule/expose-proto-casing/",
};

pub static EXPOSE_INVALID_FORMAT: Rule = Rule {
    name: "ExposeInvalidFormat",
    description: "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release",
    url: "https://docs.docker.com/go/dockerfile/rule/expose-invalid-format/",
};

/// Every rule rbuild implements, in BuildKit's order.
pub static ALL: &[&Rule] = &[
    &STAGE_NAME_CASING,
    &FROM_AS_CASING,
    &NO_EMPTY_CONTINUATION,
    &CONSISTENT_INSTRUCTION_CASING,
    &DUPLICATE_STAGE_NAME,
    &RESERVED_STAGE_NAME,
    &JSON_ARGS_RECOMMENDED,
    &MAINTAINER_DEPRECATED,
    &UNDEFINED_ARG_IN_FROM,
    &WORKDIR_RELATIVE_PATH,
    &UNDEFINED_VAR,
    &MULTIPLE_INSTRUCTIONS_DISALLOWED,
    &LEGACY_KEY_VALUE_FORMAT,
    &INVALID_BASE_IMAGE_PLATFORM,
    &REDUNDANT_TARGET_PLATFORM,
    &SECRETS_USED_IN_ARG_OR_ENV,
    &INVALID_DEFAULT_ARG_IN_FROM,
    &FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    &COPY_IGNORED_FILE,
    &EXPOSE_PROTO_CASING,
    &EXPOSE_INVALID_FORMAT,
];
