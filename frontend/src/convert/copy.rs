//! COPY and ADD: sources from the context, other stages, URLs and git repositories.

use super::*;
use crate::instructions::{CopyInstr, Located, Location};
use crate::parser;
use crate::shell::{EnvLookup, Lexer};
use rbuild_solver::{CopyAction, FileAction, FileOp, Op, Vertex, VertexId};

impl Converter<'_> {
    /// The size of the `.dockerignore` patterns, which every step reading the context carries a copy of.
    pub(super) fn dockerignore_bytes(&self) -> usize {
        self.opts.context_excludes.iter().map(String::len).sum()
    }

    /// A layer holding `source` of the build context at `/mount`, for a bind mount without `from`.
    pub(super) fn context_copy(&mut self, source: &str, name: &str) -> VertexId {
        let context = self.context_vertex();
        let source = join_path("/", source);
        self.add(Vertex {
            op: Op::File(FileOp {
                dest: None,
                actions: vec![FileAction::Copy(CopyAction {
                    src: 0,
                    sources: vec![source.clone()],
                    dest: "/mount".into(),
                    chown: None,
                    chmod: None,
                    extract_archives: false,
                    keep_owner: false,
                    excludes: Vec::new(),
                    dockerignore: self.opts.context_excludes.clone(),
                    parents: false,
                })],
            }),
            inputs: vec![context],
            name: format!("[internal] {name}: context files {source} for a bind mount"),
            ignore_cache: false,
        })
    }

    pub(super) fn dispatch_copy(
        &mut self,
        index: usize,
        state: &mut StageState,
        located: &Located,
        c: &CopyInstr,
        is_add: bool,
    ) -> Result<(), ConvertError> {
        let at = &located.location;
        let kw = if is_add { "ADD" } else { "COPY" };
        let vars = StageVars(state);
        let env: &dyn EnvLookup = &vars;
        let expand_opt = |this: &Self, v: &Option<String>| match v {
            Some(v) => this.expand(v, env, at).map(Some),
            None => Ok(None),
        };
        let chown = expand_opt(self, &c.chown)?;
        let chmod_word = expand_opt(self, &c.chmod)?;
        let chmod = match &chmod_word {
            Some(v) => Some(u32::from_str_radix(v, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| {
                ConvertError::at(at, format!("invalid --chmod value {v:?}"))
                    .hint("--chmod takes an octal mode such as 755")
            })?),
            None => None,
        };
        let checksum = expand_opt(self, &c.checksum)?;
        let mut excludes = Vec::new();
        for e in &c.excludes {
            excludes.push(self.expand(e, env, at)?);
        }

        // Sources: heredocs (`<<EOF`), URLs and Git repositories (ADD), and paths in the context or --from.
        let mut heredocs = c.heredocs.iter();
        let mut inline: Vec<(String, String)> = Vec::new();
        let mut remote: Vec<(String, Op)> = Vec::new();
        let mut paths = Vec::new();
        let mut shown = Vec::new();
        for word in &c.sources {
            if let Ok(Some(marker)) = parser::parse_heredoc(word)
                && let Some(doc) = heredocs.next()
            {
                let _ = marker;
                let mut data =
                    if doc.chomp { parser::chomp_heredoc_content(&doc.content) } else { doc.content.clone() };
                if doc.expand {
                    let raw = Lexer::new('\\').skip_process_quotes(true);
                    let expanded = raw
                        .process_word(&data, env)
                        .map_err(|e| ConvertError::at(at, format!("failed to expand heredoc <<{}: {e}", doc.name)))?;
                    self.charge(expanded.len().saturating_sub(data.len()), at)?;
                    data = expanded;
                }
                shown.push(format!("<<{}", doc.name));
                inline.push((doc.name.clone(), data));
                continue;
            }
            let src = self.expand(word, env, at)?;
            shown.push(src.clone());
            if is_add && c.from.is_none() {
                if let Some(op) = git_source(&src, c.keep_git_dir) {
                    remote.push((src, op));
                    continue;
                }
                if src.starts_with("http://") || src.starts_with("https://") {
                    let filename = url_filename(&src);
                    remote.push((src.clone(), Op::Http { url: src, checksum: checksum.clone(), filename }));
                    continue;
                }
            }
            if c.from.is_none() {
                self.check_copy_source(is_add, &src, at);
            }
            paths.push(src);
        }
        if checksum.is_some() && (remote.is_empty() || !paths.is_empty()) {
            return Err(ConvertError::at(at, "checksum can't be specified for non-HTTP(S) sources")
                .hint("ADD --checksum=sha256:<hex> https://example.com/file /dest"));
        }
        if c.keep_git_dir && !remote.iter().any(|(_, op)| matches!(op, Op::Git { .. })) {
            return Err(ConvertError::at(at, "--keep-git-dir is only valid for a Git repository source"));
        }
        if shown.is_empty() {
            return Err(
                ConvertError::at(at, format!("{kw} needs at least one source")).hint(format!("{kw} <src>... <dest>"))
            );
        }
        // Destination: joined with WORKDIR; a trailing slash (or several sources) means "into this directory".
        let dest = self.expand(&c.dest, env, at)?;
        let workdir = state.config.config.working_dir.clone().unwrap_or_else(|| "/".into());
        let dir_dest = dest.ends_with('/') || dest == "." || dest.ends_with("/.") || dest.is_empty();
        let mut dest_path = join_path(&workdir, &dest);
        if dir_dest && !dest_path.ends_with('/') {
            dest_path.push('/');
        }

        let mut inputs = vec![state.rootfs];
        let mut actions = Vec::new();
        let copy = |src: usize, sources: Vec<String>, keep_owner: bool, dockerignore: Vec<String>| {
            FileAction::Copy(CopyAction {
                src,
                sources,
                dest: dest_path.clone(),
                chown: chown.clone(),
                chmod,
                extract_archives: is_add,
                keep_owner,
                excludes: excludes.clone(),
                dockerignore,
                parents: c.parents,
            })
        };
        if !paths.is_empty() {
            let (src_vertex, keep_owner, dockerignore) = match &c.from {
                None => {
                    self.charge(self.dockerignore_bytes(), at)?;
                    (self.context_vertex(), false, self.opts.context_excludes.clone())
                }
                Some(from) => {
                    let from = self.expand(from, &self.global, at)?;
                    match self.find_stage_from(&from, index, at)? {
                        Some(i) => (self.build_stage(i)?.rootfs, true, Vec::new()),
                        // Like the build context: files are owned by root unless --chown says otherwise.
                        None if self.opts.named_contexts.contains(&from) => {
                            (self.named_context_vertex(&from), false, Vec::new())
                        }
                        None => (self.image_vertex(&from, &state.platform, at)?.0, true, Vec::new()),
                    }
                }
            };
            inputs.push(src_vertex);
            actions.push(copy(inputs.len() - 1, paths, keep_owner, dockerignore));
        }
        for (url, op) in remote {
            let filename = match &op {
                Op::Http { filename, .. } => format!("/{filename}"),
                _ => "/".into(),
            };
            let v =
                self.add(Vertex { op, inputs: vec![], name: format!("[internal] fetch {url}"), ignore_cache: false });
            inputs.push(v);
            // A downloaded file is copied as a file (never extracted); a repository's tree as a directory.
            let mut action = copy(inputs.len() - 1, vec![filename], false, Vec::new());
            if let FileAction::Copy(a) = &mut action {
                a.extract_archives = false;
            }
            actions.push(action);
        }
        if !inline.is_empty() {
            let names: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
            let files = inline
                .into_iter()
                .map(|(name, data)| FileAction::MkFile { path: format!("/{name}"), data, mode: 0o644, owner: None })
                .collect();
            let v = self.add(Vertex {
                op: Op::File(FileOp { dest: None, actions: files }),
                inputs: vec![],
                name: "[internal] preparing inline document".into(),
                ignore_cache: false,
            });
            inputs.push(v);
            let mut action = copy(inputs.len() - 1, names, true, Vec::new());
            if let FileAction::Copy(a) = &mut action {
                a.extract_archives = false;
            }
            actions.push(action);
        }
        let input = state.rootfs;
        let name = self.step_name(index, state, &located.original, None);
        state.rootfs = self.add(Vertex {
            op: Op::File(FileOp { dest: Some(0), actions }),
            inputs,
            name,
            ignore_cache: state.no_cache,
        });
        // BuildKit's history: flags that change the result, sources as expanded (heredocs as <<NAME), dest as
        // written; never --from.
        let mut flags = String::new();
        if c.parents {
            flags.push_str(" --parents");
        }
        if let Some(o) = &chown {
            flags.push_str(&format!(" --chown={o}"));
        }
        if let Some(m) = &chmod_word {
            flags.push_str(&format!(" --chmod={m}"));
        }
        state.history.push(HistoryStep::Layer {
            created_by: format!("{kw}{flags} {} {dest} # buildkit", shown.join(" ")),
            input,
            output: state.rootfs,
        });
        Ok(())
    }
}

/// True when the whole command is one heredoc marker (`<<EOF`, `<<-"EOF"`), as BuildKit's MustParseHeredoc decides.
pub(super) fn is_heredoc_marker(cmd: &str) -> bool {
    matches!(parser::parse_heredoc(cmd.trim()), Ok(Some(_)))
}

pub(super) fn located_name(at: &Location) -> String {
    format!("line {}", at.start_line)
}

/// `ADD` of a Git repository: `git@host:repo`, `git://...`, or an http(s) URL whose path ends in `.git`
/// (optionally with `#ref[:subdir]`). `None` for anything else.
pub(super) fn git_source(src: &str, keep_git_dir: bool) -> Option<Op> {
    let (remote, fragment) = match src.split_once('#') {
        Some((r, f)) => (r, f),
        None => (src, ""),
    };
    let is_http_git = (remote.starts_with("https://") || remote.starts_with("http://"))
        && remote.split('?').next().is_some_and(|p| p.ends_with(".git"));
    if !(remote.starts_with("git@") || remote.starts_with("git://") || remote.starts_with("ssh://") || is_http_git) {
        return None;
    }
    let (remote, keep) = match remote.split_once('?') {
        // BuildKit's query form: `?ref=v1&keep-git-dir=1`.
        Some((r, q)) => {
            let mut reference = fragment.to_string();
            let mut keep = keep_git_dir;
            for kv in q.split('&') {
                match kv.split_once('=') {
                    Some(("ref", v)) => reference = v.to_string(),
                    Some(("keep-git-dir", v)) => keep = v == "1" || v == "true",
                    _ => {}
                }
            }
            return Some(Op::Git { remote: r.to_string(), reference, keep_git_dir: keep });
        }
        None => (remote, keep_git_dir),
    };
    let reference = fragment.split(':').next().unwrap_or("").to_string();
    Some(Op::Git { remote: remote.to_string(), reference, keep_git_dir: keep })
}

/// The name a downloaded file gets: the URL path's last component, as BuildKit names it.
pub(super) fn url_filename(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let path = without_query.splitn(4, '/').nth(3).unwrap_or("");
    match path.rsplit('/').next() {
        Some(n) if !n.is_empty() && n != "." && n != ".." => n.to_string(),
        _ => "__unnamed__".to_string(),
    }
}
