//! Rules that need only the parsed Dockerfile, run over every stage before conversion, as BuildKit runs them
//! while parsing instructions (`instructions.Parse`, `validateStageNames`, `validateCommandCasing`).
//!
//! They read the keyword as written (the parser lowercases `Node::value`), so they take it from the node's
//! original line.

use super::{Lint, rules};
use crate::instructions::Location;
use crate::parser::{Ast, Node};
use std::collections::HashSet;

/// BuildKit's reserved stage names.
const RESERVED_STAGE_NAMES: &[&str] = &["context", "scratch"];

/// The instruction keyword as written (`From`, `RUN`, `run`).
fn keyword(node: &Node) -> &str {
    node.original.split_whitespace().next().unwrap_or(&node.value)
}

fn location(node: &Node) -> Location {
    Location { start_line: node.start_line, end_line: node.end_line.max(node.start_line) }
}

fn is_self_consistent(s: &str) -> bool {
    s == s.to_lowercase() || s == s.to_uppercase()
}

/// Runs the parse-time rules over `ast`, in BuildKit's order: per instruction (MaintainerDeprecated,
/// StageNameCasing, FromAsCasing), then stage names (ReservedStageName, DuplicateStageName), then casing
/// (ConsistentInstructionCasing). NoEmptyContinuation comes first, from the parser's warnings.
pub fn check(ast: &Ast, lint: &mut Lint) {
    for w in &ast.warnings {
        if w.message.starts_with("Empty continuation line") {
            let at = Location { start_line: w.line, end_line: w.line };
            lint.run(&rules::NO_EMPTY_CONTINUATION, "Empty continuation line".into(), Some(&at));
        }
    }
    let nodes = &ast.root.children;
    for node in nodes {
        let at = location(node);
        if matches!(node.value.as_str(), "env" | "label")
            && node.next.chunks(3).any(|kv| kv.get(2).is_some_and(|d| d.value.is_empty()))
        {
            lint.legacy_kv_lines.insert(node.start_line);
        }
        match node.value.as_str() {
            "maintainer" => lint.run(
                &rules::MAINTAINER_DEPRECATED,
                "Maintainer instruction is deprecated in favor of using label".into(),
                Some(&at),
            ),
            "from" => {
                let args: Vec<&str> = node.next.iter().map(|n| n.value.as_str()).collect();
                if args.len() == 3 && args[2] != args[2].to_lowercase() {
                    lint.run(
                        &rules::STAGE_NAME_CASING,
                        format!("Stage name '{}' should be lowercase", args[2]),
                        Some(&at),
                    );
                }
                let from = keyword(node);
                if args.len() >= 3 && is_self_consistent(from) {
                    let matches = if from == from.to_lowercase() {
                        args[1] == args[1].to_lowercase()
                    } else {
                        args[1] == args[1].to_uppercase()
                    };
                    if !matches {
                        lint.run(
                            &rules::FROM_AS_CASING,
                            format!("'{}' and '{from}' keywords' casing do not match", args[1]),
                            Some(&at),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    let mut seen = HashSet::new();
    for node in nodes.iter().filter(|n| n.value == "from") {
        let args: Vec<&str> = node.next.iter().map(|n| n.value.as_str()).collect();
        if args.len() != 3 || !args[1].eq_ignore_ascii_case("as") {
            continue;
        }
        let name = args[2].to_lowercase();
        let at = location(node);
        if RESERVED_STAGE_NAMES.contains(&name.as_str()) {
            lint.run(
                &rules::RESERVED_STAGE_NAME,
                format!(
                    "Stage name should not use the same name as reserved stage {}",
                    crate::parser::quote::go_quote(&name)
                ),
                Some(&at),
            );
        }
        if !seen.insert(name.clone()) {
            lint.run(
                &rules::DUPLICATE_STAGE_NAME,
                format!("Duplicate stage name {}, stage names should be unique", crate::parser::quote::go_quote(&name)),
                Some(&at),
            );
        }
    }
    // Casing counts and checks only the instructions of stages (from the first FROM on), as BuildKit does.
    let staged: &[Node] = match nodes.iter().position(|n| n.value == "from") {
        Some(first) => &nodes[first..],
        None => &[],
    };
    let (mut lower, mut upper) = (0usize, 0usize);
    for node in staged {
        let kw = keyword(node);
        if is_self_consistent(kw) {
            if kw == kw.to_lowercase() {
                lower += 1;
            } else {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    for node in staged {
        let kw = keyword(node);
        let correct = if majority_lower && kw != kw.to_lowercase() {
            "lowercase"
        } else if !majority_lower && kw != kw.to_uppercase() {
            "uppercase"
        } else {
            continue;
        };
        lint.run(
            &rules::CONSISTENT_INSTRUCTION_CASING,
            format!("Command '{kw}' should match the case of the command majority ({correct})"),
            Some(&location(node)),
        );
    }
}
