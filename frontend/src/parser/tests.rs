use super::*;

fn dump(src: &str) -> String {
    match parse(src) {
        Ok(ast) => ast.root.dump(),
        Err(e) => format!("ERROR: {e}"),
    }
}

#[test]
fn continuation_skips_comments_and_blank_lines_and_warns() {
    let ast = parse("FROM a\nRUN echo a \\\n# comment\n\n  b\n").unwrap();
    assert_eq!(ast.root.dump(), "(from \"a\")\n(run \"echo a   b\")");
    let run = &ast.root.children[1];
    assert_eq!((run.start_line, run.end_line), (2, 5));
    assert_eq!(ast.warnings.len(), 1);
    assert_eq!(ast.warnings[0].line, 5);
}

#[test]
fn escaped_escape_is_not_a_continuation() {
    assert_eq!(dump("RUN a\\\\\nRUN b"), "(run \"a\\\\\\\\\")\n(run \"b\")");
}

#[test]
fn directives_only_at_the_top() {
    let ast = parse("\u{feff}# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN b `\n c\n# escape=\\\n").unwrap();
    assert_eq!(ast.escape, '`');
    assert_eq!(ast.syntax.as_deref(), Some("docker/dockerfile:1"));
    assert_eq!(ast.root.children[1].next[0].value, "b  c");
    let late = parse("FROM a\n# escape=`\nRUN b `\n").unwrap();
    assert_eq!(late.escape, '\\');
    let after_blank = parse("\n# escape=`\nFROM a\n").unwrap();
    assert!(after_blank.directives.is_empty());
}

#[test]
fn directive_errors_carry_the_line() {
    let e = parse("# escape=x\nFROM a").unwrap_err();
    assert_eq!(e.line(), 1);
    assert!(matches!(e.kind(), ParseErrorKind::InvalidEscapeToken { .. }));
    let e = parse("# syntax=a\n# syntax=b\nFROM a").unwrap_err();
    assert_eq!(e.line(), 2);
    assert_eq!(e.to_string(), "dockerfile parse error on line 2: only one syntax parser directive can be used");
}

#[test]
fn crlf_is_handled() {
    let ast = parse("FROM a\r\nRUN x \\\r\n  y\r\nCOPY <<EOF /f\r\nhi\r\nEOF\r\n").unwrap();
    assert_eq!(ast.root.dump(), "(from \"a\")\n(run \"x   y\")\n(copy \"<<EOF\" \"/f\")");
    assert_eq!(ast.root.children[2].heredocs[0].content, "hi\r\n");
}

#[test]
fn flags_are_unquoted_bytewise() {
    assert_eq!(dump("COPY --chown=\"a b\" --x='1' -- --y z"), "(copy [\"--chown=a b\" \"--x=1\"] \"--y\" \"z\")");
    // Each byte is taken as a Latin-1 rune, as BuildKit does.
    assert_eq!(dump("COPY --chown=é a b"), "(copy [\"--chown=Ã©\"] \"a\" \"b\")");
    // U+00E0 ends in byte 0xA0, which Go's scanner takes for a blank: no panic, lossy text.
    assert!(dump("COPY --a=à b").starts_with("(copy [\"--a=Ã\"]"));
}

#[test]
fn json_vs_shell_form() {
    assert_eq!(dump("CMD [\"a\"] x"), "(cmd \"[\\\"a\\\"] x\")");
    assert!(!parse("CMD [\"a\"] x").unwrap().root.children[0].json);
    assert!(parse("CMD [\"a\"]").unwrap().root.children[0].json);
    let e = parse("FROM a\nRUN [\"a\", 1]").unwrap_err();
    assert_eq!(e.line(), 2);
    assert_eq!(*e.kind(), ParseErrorKind::JsonNotStringArray);
}

#[test]
fn onbuild_wraps_inner_instruction() {
    let ast = parse("ONBUILD RUN [\"a\"]\nONBUILD COPY <<EOF /x\nbody\nEOF\n").unwrap();
    let first = &ast.root.children[0];
    assert_eq!(first.dump(), "onbuild (run \"a\")");
    let inner = first.onbuild_inner().unwrap();
    assert!(inner.json);
    let second = &ast.root.children[1];
    assert_eq!(second.heredocs.len(), 1);
    assert_eq!(second.heredocs[0].content, "body\n");
    assert_eq!(second.end_line, 4);
}

#[test]
fn heredocs() {
    let ast = parse("FROM a\nRUN <<-'E' cat\n\tx $Y\n\tE\nRUN [\"<<F\"]\nUSER <<G\n").unwrap();
    let h = &ast.root.children[1].heredocs[0];
    assert_eq!((h.name.as_str(), h.content.as_str(), h.expand, h.chomp), ("E", "\tx $Y\n", false, true));
    assert!(ast.root.children[2].heredocs.is_empty());
    assert!(ast.root.children[3].heredocs.is_empty());
    assert_eq!(chomp_heredoc_content("\ta\n\t\tb\nc\t\n"), "a\nb\nc\t\n");
    let e = parse("FROM a\nRUN <<EOF\nnever\n").unwrap_err();
    assert_eq!((e.line(), e.end_line()), (2, 3));
    assert!(matches!(e.kind(), ParseErrorKind::UnterminatedHeredoc { .. }));
}

#[test]
fn env_forms_and_errors() {
    assert_eq!(dump("ENV a b c"), "(env \"a\" \"b c\" \"\")");
    assert_eq!(dump("ENV a=b c=\"d e\""), "(env \"a\" \"b\" \"=\" \"c\" \"\\\"d e\\\"\" \"=\")");
    assert_eq!(dump("ENV"), "(env)");
    let e = parse("ENV a=b c").unwrap_err();
    assert_eq!(e.kind().to_string(), "Syntax error - can't find = in \"c\". Must be of the form: name=value");
    assert_eq!(parse("LABEL x").unwrap_err().kind().to_string(), "LABEL must have two arguments");
}

#[test]
fn other_instructions() {
    assert_eq!(dump("HEALTHCHECK --interval=5s CMD [\"a\"]"), "(healthcheck [\"--interval=5s\"] \"CMD\" \"a\")");
    assert_eq!(dump("HEALTHCHECK NONE"), "(healthcheck \"NONE\")");
    assert_eq!(dump("frobnicate x y"), "(frobnicate \"\")");
    assert_eq!(dump("ARG a=\"b c\" d"), "(arg \"a=\\\"b c\\\"\" \"d\")");
    assert_eq!(dump("from  img  AS  x"), "(from \"img\" \"AS\" \"x\")");
    assert_eq!(dump("\\\n"), "(\"\")");
}

#[test]
fn prev_comments_are_collected() {
    let ast = parse("# syntax=x\n# about a\n#\n# really a\nARG a\n").unwrap();
    assert_eq!(ast.root.children[0].prev_comment, vec!["really a"]);
}

#[test]
fn no_instructions_is_an_error() {
    assert_eq!(*parse("").unwrap_err().kind(), ParseErrorKind::NoInstructions);
    assert_eq!(*parse("# c\n\n").unwrap_err().kind(), ParseErrorKind::NoInstructions);
}

#[test]
fn overlong_line_is_rejected_like_go_scanner() {
    let long = format!("FROM a\nRUN {}\n", "x".repeat(MAX_LINE));
    let e = parse(&long).unwrap_err();
    assert_eq!((e.line(), e.kind().clone()), (2, ParseErrorKind::LineTooLong));
    let fits = format!("FROM a\nRUN {}\n", "x".repeat(MAX_LINE - 5));
    assert!(parse(&fits).is_ok());
}

#[test]
fn heredoc_words() {
    let h = parse_heredoc("3<<-\"EOF\"").unwrap().unwrap();
    assert_eq!((h.name.as_str(), h.file_descriptor, h.chomp, h.expand), ("EOF", 3, true, false));
    assert_eq!(parse_heredoc("<<EOF sh").unwrap(), None);
    assert!(parse_heredoc("<<'EOF").is_err());
    assert!(parse_heredoc("<<eo\\'f").unwrap().unwrap().expand);
}

/// A small deterministic generator (xorshift64*), so the garbled inputs are the same on every run.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
fn garbled_input_never_panics() {
    let sample = "\u{feff}# syntax=x\n# escape=`\nFROM a AS b\nRUN --mount=type=cache,target=/x <<-'E' `\n\tcat\n\tE\n\
                  COPY [\"a\", \"b\"] /c\nENV k=\"v w\" x='y'\nONBUILD ADD <<F /f\nbody\nF\nHEALTHCHECK CMD [\"x\"]\n\
                  LABEL a b\nARG z=${y:-é}\nCMD [\"\\ud800\", 1]\r\n";
    let bytes = sample.as_bytes();
    // Every prefix, then random flips, insertions and truncations.
    for end in 0..=bytes.len() {
        let _ = parse(&String::from_utf8_lossy(&bytes[..end]));
    }
    let mut state = 0x1234_5678_9abc_def0u64;
    for _ in 0..2000 {
        let mut b = bytes.to_vec();
        for _ in 0..1 + next_rand(&mut state) % 6 {
            let at = (next_rand(&mut state) as usize) % b.len().max(1);
            if b.is_empty() {
                break;
            }
            match next_rand(&mut state) % 3 {
                0 => b[at] ^= 1 << (next_rand(&mut state) % 8),
                1 => b.insert(at, b"\\`\"'$[]{}<-\n\r\t#= "[(next_rand(&mut state) % 17) as usize]),
                _ => b.truncate(at),
            }
        }
        if let Ok(ast) = parse(&String::from_utf8_lossy(&b)) {
            let _ = ast.root.dump();
        }
    }
}

/// Issue 9 item 6: a line of thousands of `ONBUILD` keywords recursed once per keyword and overflowed the stack.
#[test]
fn deeply_nested_onbuild_is_an_error_with_its_line() {
    let deep = format!("FROM a\n{}RUN x\n", "ONBUILD ".repeat(8_000));
    let e = parse(&deep).unwrap_err();
    assert_eq!((e.line(), e.kind().clone()), (2, ParseErrorKind::OnbuildTooDeep { limit: MAX_ONBUILD_NESTING }));
    assert!(e.to_string().starts_with("dockerfile parse error on line 2: ONBUILD is nested"), "{e}");
    // BuildKit's parser accepts a few levels (the typed layer rejects them later): so does this one.
    assert!(parse("FROM a\nONBUILD ONBUILD RUN x\n").is_ok());
}
