//! Any bytes through everything the frontend does with a Dockerfile: parse, dump, expand every word of every
//! line, and convert each stage with a resolver that knows every image. Errors are fine; a panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbuild_frontend::shell::{Lexer, NoEnv};
use rbuild_frontend::{ConvertOptions, ImageResolver, NoCache, ResolvedImage, convert, parser};
use rbuild_types::Digest;
use rbuild_types::oci::{ContainerConfig, ImageConfig, Platform};
use std::collections::BTreeMap;

/// Every image exists; its config carries an ONBUILD trigger and a SHELL so that those paths run too.
struct AnyImage;

impl ImageResolver for AnyImage {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, Box<dyn std::error::Error + Send + Sync>> {
        let config = ContainerConfig {
            on_build: reference.contains("onbuild").then(|| vec!["RUN echo x".to_string(), "COPY a b".into()]),
            shell: reference.contains("shell").then(|| vec!["/bin/bash".to_string(), "-c".into()]),
            ..Default::default()
        };
        Ok(ResolvedImage {
            reference: reference.to_string(),
            digest: Digest::of(reference.as_bytes()),
            config: ImageConfig {
                architecture: platform.architecture.clone(),
                os: platform.os.clone(),
                config,
                ..Default::default()
            },
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lexer = Lexer::new('\\');
    for line in text.lines().take(64) {
        let _ = lexer.process_words(line, &NoEnv);
        let _ = lexer.process_word(line, &NoEnv);
    }
    let Ok(ast) = parser::parse(&text) else { return };
    let _ = ast.root.dump();
    let mut targets: Vec<Option<String>> = vec![None];
    for node in ast.root.children.iter().filter(|n| n.value == "from") {
        if let Some(name) = node.next.get(2) {
            targets.push(Some(name.value.clone()));
        }
    }
    for target in targets.into_iter().take(8) {
        let opts = ConvertOptions {
            build_args: BTreeMap::from([("A".to_string(), "1".to_string()), ("HTTP_PROXY".into(), "p".into())]),
            target,
            platform: Platform { architecture: "amd64".into(), os: "linux".into(), variant: None },
            build_platform: Platform { architecture: "amd64".into(), os: "linux".into(), variant: None },
            no_cache: NoCache::None,
            context_excludes: vec!["*.secret".into(), "!keep.secret".into()],
            named_contexts: Default::default(),
        };
        let _ = convert(&ast, &opts, &AnyImage);
    }
});
