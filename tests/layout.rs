//! The module graph of every crate in the workspace has no cycles (ARCHITECTURE.md, "Layers").
//!
//! A small text reader, not a compiler: each `.rs` file under a crate's `src/` is one module
//! (`foo.rs` and `foo/mod.rs` are `foo`, `foo/bar.rs` is `foo::bar`); comments, string
//! literals and `#[cfg(test)]` modules are dropped; then every `crate::…`, `super::…` and
//! `self::…` path, every path into a child module declared with `mod name;`, and every `use`
//! tree built of them is resolved to the longest module prefix it names. An edge `a -> b` means
//! a's code names something in `b`. A test fails naming each circle it finds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[test]
fn root_crate_has_no_module_cycles() {
    assert_no_cycles("src");
}

#[test]
fn ingest_crate_has_no_module_cycles() {
    assert_no_cycles("ingest/src");
}

#[test]
fn pg_crate_has_no_module_cycles() {
    assert_no_cycles("pg/src");
}

#[test]
fn index_crate_has_no_module_cycles() {
    assert_no_cycles("index/src");
}

/// The reader itself: a known cycle is found and named, a layered graph passes.
#[test]
fn the_reader_finds_a_cycle_through_use_trees_and_super() {
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        (
            "a/mod.rs",
            "pub mod inner;\nuse crate::{b::Thing, c};\n// crate::c::Nothing in a comment\n",
        ),
        ("a/inner.rs", "use super::super::c::X;\n"),
        (
            "b.rs",
            "fn f() { let s = \"crate::a::Y\"; crate::c::g(); }\n",
        ),
        (
            "c.rs",
            "use crate::a::inner::Z;\n#[cfg(test)]\nmod tests {\n    use crate::b::T;\n}\n",
        ),
    ];
    let modules: Vec<Module> = files
        .iter()
        .map(|(path, text)| Module::read(Path::new(path), text))
        .collect();
    let graph = edges(&modules);
    assert_eq!(
        graph["a"],
        BTreeSet::from(["b".to_string(), "c".to_string()])
    );
    assert_eq!(graph["b"], BTreeSet::from(["c".to_string()]));
    assert_eq!(graph["c"], BTreeSet::from(["a::inner".to_string()]));
    let found = cycles(&graph);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, vec!["a::inner", "c"]);
}

fn assert_no_cycles(dir: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(!files.is_empty(), "no .rs files under {}", root.display());
    let modules: Vec<Module> = files
        .iter()
        .filter(|f| f.strip_prefix(&root).ok() != Some(Path::new("main.rs")))
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read a source file");
            Module::read(f.strip_prefix(&root).expect("under root"), &text)
        })
        .collect();
    let described: Vec<String> = cycles(&edges(&modules))
        .iter()
        .map(|(circle, component)| {
            format!(
                "{} -> {}   (all modules on circles with it: {})",
                circle.join(" -> "),
                circle[0],
                component.join(", ")
            )
        })
        .collect();
    assert!(
        described.is_empty(),
        "module cycles in {dir} (a lower module must not name a higher one; move the shared \
         type down, see ARCHITECTURE.md):\n  {}",
        described.join("\n  ")
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read a source directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// One file: its module path, its declared child modules and its code with comments, strings
/// and test modules removed.
struct Module {
    path: Vec<String>,
    children: Vec<String>,
    code: String,
}

impl Module {
    fn read(relative: &Path, text: &str) -> Module {
        let mut path: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let file = path.pop().expect("a file name");
        let stem = file.trim_end_matches(".rs");
        if !matches!(stem, "mod" | "lib" | "main") {
            path.push(stem.to_string());
        }
        let code = without_test_modules(&strip_comments_and_strings(text));
        let children = declared_children(&code);
        Module {
            path,
            children,
            code,
        }
    }

    fn name(&self) -> String {
        self.path.join("::")
    }
}

/// Replaces comments and the contents of string and char literals with spaces (lifetimes and
/// labels are kept as code).
fn strip_comments_and_strings(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(end) = raw_string_end(&c, i) {
            out.push_str("\"\"");
            i = end;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && is_char_literal(&c, i) {
            i += 1;
            while i < c.len() && c[i] != '\'' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// At `r"`, `r#"`, `br"` (not inside an identifier): the index just past the literal.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"' && (1..=hashes).all(|h| c.get(j + h) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

/// A `'` opens a char literal (`'a'`, `'\n'`, `'\u{1F600}'`), not a lifetime or label.
fn is_char_literal(c: &[char], i: usize) -> bool {
    matches!(
        (c.get(i + 1), c.get(i + 2)),
        (Some('\\'), _) | (Some(_), Some('\''))
    )
}

/// Drops `#[cfg(test)] mod name { … }` blocks: test code may reach anywhere.
fn without_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_block = trimmed
            .strip_prefix("mod ")
            .and_then(|m| m.find(['{', ';']).map(|p| m.as_bytes()[p] == b'{'))
            .unwrap_or(false);
        if !is_block {
            out.push_str(&rest[at..at + "#[cfg(test)]".len()]);
            rest = after;
            continue;
        }
        let open = after.find('{').expect("a block");
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, ch) in after[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// `mod name;` declarations (child modules in their own files).
fn declared_children(code: &str) -> Vec<String> {
    let mut children = Vec::new();
    let tokens = words(code);
    for w in tokens.windows(3) {
        if w[0] == "mod" && w[2] == ";" {
            children.push(w[1].clone());
        }
    }
    children
}

/// Identifiers, `::`, and single punctuation characters, in order.
fn words(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if is_ident(ch) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if ch == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if !ch.is_whitespace() {
                out.push(ch.to_string());
            }
            i += 1;
        }
    }
    out
}

/// Every path the module's code names, as segment lists starting at `crate`, `super`, `self`
/// or a declared child; `use` trees (`crate::{a::X, b}`) are expanded.
fn paths(module: &Module) -> Vec<Vec<String>> {
    let tokens = words(&module.code);
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        let starts =
            matches!(t, "crate" | "super" | "self") || module.children.iter().any(|c| c == t);
        let preceded = i > 0 && tokens[i - 1] == "::";
        if starts && !preceded && tokens.get(i + 1).is_some_and(|n| n == "::") {
            i = path_tree(&tokens, i, Vec::new(), &mut found);
        } else {
            i += 1;
        }
    }
    found
}

/// Reads a path (with `{…}` groups) starting at `tokens[i]` after `prefix`; pushes each full
/// path and returns the index after it.
fn path_tree(
    tokens: &[String],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    match tokens.get(i).map(String::as_str) {
                        Some("}") => return i + 1,
                        Some(",") => i += 1,
                        None => return i,
                        _ => i = path_tree(tokens, i, prefix.clone(), out),
                    }
                }
            }
            Some(t) if t.chars().all(is_ident) || t == "*" => {
                prefix.push(t.to_string());
                i += 1;
                if tokens.get(i).is_some_and(|n| n == "::") {
                    i += 1;
                } else {
                    out.push(prefix);
                    return i;
                }
            }
            _ => {
                out.push(prefix);
                return i;
            }
        }
    }
}

/// Module → the other modules its code names.
fn edges(modules: &[Module]) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    let mut graph = BTreeMap::new();
    for m in modules {
        let mut targets = BTreeSet::new();
        for p in paths(m) {
            let Some(absolute) = absolute(&m.path, &p) else {
                continue;
            };
            // The longest prefix that is a module: `crate::a::b::Item` names `a::b`.
            let target = (0..=absolute.len())
                .rev()
                .map(|n| absolute[..n].to_vec())
                .find(|prefix| known.contains(prefix))
                .unwrap_or_default();
            if target != m.path && !target.is_empty() && !m.path.starts_with(&target) {
                targets.insert(target.join("::"));
            }
        }
        graph.insert(m.name(), targets);
    }
    graph
}

/// A path relative to module `at` as segments from the crate root; `None` when it climbs
/// above the root.
fn absolute(at: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = at.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        _ => {}
    }
    while rest.first().is_some_and(|s| s == "super") {
        base.pop()?;
        rest = &rest[1..];
    }
    base.extend(rest.iter().filter(|s| *s != "*").cloned());
    Some(base)
}

/// The strongly connected components with more than one module, each as one circle through
/// it (Tarjan's algorithm, then a path search inside the component) and its sorted members.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<(Vec<String>, Vec<String>)> {
    struct Tarjan<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        components: Vec<Vec<&'g str>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.graph.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.components.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    let mut circles: Vec<(Vec<String>, Vec<String>)> = t
        .components
        .iter()
        .map(|component| {
            let members: BTreeSet<&str> = component.iter().copied().collect();
            let start = *members.iter().next().expect("non-empty");
            let all = members.iter().map(|s| s.to_string()).collect();
            (circle_through(graph, &members, start), all)
        })
        .collect();
    circles.sort();
    circles
}

/// A shortest path from `start` back to itself inside `members` (breadth-first).
fn circle_through(
    graph: &BTreeMap<String, BTreeSet<String>>,
    members: &BTreeSet<&str>,
    start: &str,
) -> Vec<String> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !members.contains(w) {
                continue;
            }
            if w == start {
                let mut circle = vec![v.to_string()];
                let mut at = v;
                while at != start {
                    at = came_from[at];
                    circle.push(at.to_string());
                }
                circle.reverse();
                return circle;
            }
            if !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    members.iter().map(|s| s.to_string()).collect()
}
