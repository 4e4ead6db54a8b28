//! The crate's modules import each other without a circle: every `use` and every
//! `crate::` / `super::` / `self::` / `graft::` path in the non-test code of `src/` is an edge
//! from the file's module to the module that defines what it names (the longest module prefix
//! of the path, followed through `pub use` re-exports), and the graph of those edges has no
//! cycle. A module naming what its own parent (or an ancestor) defines is no edge: a folder's
//! `mod.rs` holds what its files share (an error type, say), the way Rust code is laid out. In `src/backbone/` that is the rule the family folders
//! follow (a family imports the shared `fused/` machinery, never another family or the modules
//! above it); elsewhere it keeps the plan below the loop that follows it, and the commands'
//! shared arguments below both commands. Test modules (`#[cfg(test)] mod tests { .. }`) may
//! reach anywhere and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every module of the library and the binary (`src/main.rs` declares `cli`), by path; the two
/// crate roots are the empty path.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            if module.is_empty() {
                continue; // the roots declare modules; they import nothing of their own
            }
            found.insert(module, path);
        }
    }
    found
}

/// The code of a file without comments, string literals and its test module.
fn code(text: &str) -> String {
    let mut kept = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.contains("mod ") && next.trim_end().ends_with('{'))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let line = line.split(" //").next().unwrap_or("");
        // String literals: what is inside quotes is not a path.
        let mut in_string = false;
        let mut previous = ' ';
        for ch in line.chars() {
            if ch == '"' && previous != '\\' {
                in_string = !in_string;
            } else if !in_string {
                kept.push(ch);
            }
            previous = ch;
        }
        kept.push('\n');
    }
    kept
}

/// The paths a `use` tree names: `a::{b, c::{d, e as f}}` gives `a::b`, `a::c::d`, `a::c::e`.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Module>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let mut path = prefix.to_vec();
        path.extend(segments(head));
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&path, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&path, &inner[start..], out);
    } else if !tree.is_empty() {
        let name = tree.split(" as ").next().unwrap_or(tree);
        let mut path = prefix.to_vec();
        path.extend(segments(name).filter(|s| s != "self"));
        out.push(path);
    }
}

fn segments(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// `path` as written in `module` made absolute, or `None` for another crate's path.
fn absolute(
    module: &Module,
    path: &[String],
    modules: &BTreeMap<Module, PathBuf>,
) -> Option<Module> {
    let (first, rest) = path.split_first()?;
    let mut base: Module = match first.as_str() {
        "crate" | "graft" => Vec::new(),
        "self" => module.clone(),
        "super" => module[..module.len().saturating_sub(1)].to_vec(),
        _ => {
            // A child module named without `self::` (2018 paths).
            let mut child = module.clone();
            child.push(first.clone());
            if !modules.contains_key(&child) {
                return None;
            }
            child
        }
    };
    let mut rest = rest;
    while let Some(("super", tail)) = rest.split_first().map(|(s, t)| (s.as_str(), t)) {
        base.pop();
        rest = tail;
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The module a path lands in: its longest prefix that is a module.
fn owner(path: &[String], modules: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains_key(prefix))
}

/// Every path a file's code names: its `use` trees and the qualified paths in its body.
fn paths(code: &str) -> Vec<Module> {
    let mut out = Vec::new();
    for statement in code.split(';') {
        let statement = statement.trim();
        let after_use = statement.split_once("use ").filter(|(before, _)| {
            before.trim().is_empty() || before.trim().ends_with(')') || before.trim() == "pub"
        });
        if let Some((_, tree)) = after_use {
            expand(&[], tree, &mut out);
        }
    }
    let bytes = code.as_bytes();
    for root in ["crate::", "super::", "self::", "graft::"] {
        for (at, _) in code.match_indices(root) {
            let boundary = at == 0
                || !(bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':');
            if !boundary {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |n| at + n);
            out.push(segments(&code[at..end]).collect());
        }
    }
    out
}

/// The names a module re-exports (`pub use a::b::C;`, `pub use a::b::C as D;`, and
/// `pub use m::*;` as `*`), each with the absolute path it stands for.
fn reexports(
    module: &Module,
    code: &str,
    modules: &BTreeMap<Module, PathBuf>,
) -> BTreeMap<String, Module> {
    let mut found = BTreeMap::new();
    for statement in code.split(';') {
        let statement = statement.trim();
        let Some((visibility, tree)) = statement.split_once("use ") else {
            continue;
        };
        if !visibility.trim().starts_with("pub") {
            continue;
        }
        for part in use_items(tree) {
            let (path, alias) = match part.split_once(" as ") {
                Some((path, alias)) => (path.trim().to_string(), Some(alias.trim().to_string())),
                None => (part.clone(), None),
            };
            let mut path: Module = segments(&path).filter(|s| s != "self").collect();
            let Some(name) = alias.or_else(|| path.last().cloned()) else {
                continue;
            };
            if name == "*" {
                path.pop(); // a glob stands for the module it empties
            }
            if let Some(target) = absolute(module, &path, modules) {
                found.insert(name, target);
            }
        }
    }
    found
}

/// The items of a `use` tree as written (`a::{b, c as d}` gives `a::b`, `a::c as d`).
fn use_items(tree: &str) -> Vec<String> {
    fn walk(prefix: &str, tree: &str, out: &mut Vec<String>) {
        let tree = tree.trim();
        if let Some(open) = tree.find('{') {
            let head = format!("{prefix}{}", tree[..open].trim());
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let (mut depth, mut start) = (0, 0);
            for (i, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        walk(&head, &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            walk(&head, &inner[start..], out);
        } else if !tree.is_empty() {
            out.push(format!("{prefix}{tree}"));
        }
    }
    let mut out = Vec::new();
    walk("", tree, &mut out);
    out
}

/// The module that defines what `path` names: its owner, through the owners' re-exports (a
/// glob re-export, `pub use m::*`, is taken for every name the owner does not re-export by
/// name).
fn definer(
    path: Module,
    modules: &BTreeMap<Module, PathBuf>,
    reexported: &BTreeMap<Module, BTreeMap<String, Module>>,
) -> Option<Module> {
    let mut path = path;
    for _ in 0..16 {
        let at = owner(&path, modules)?;
        let Some(name) = path.get(at.len()) else {
            return Some(at); // the path names the module itself
        };
        let names = &reexported[&at];
        let next: Module = if let Some(target) = names.get(name) {
            target
                .iter()
                .chain(&path[at.len() + 1..])
                .cloned()
                .collect()
        } else if let Some(glob) = names.get("*") {
            glob.iter().chain(&path[at.len()..]).cloned().collect()
        } else {
            return Some(at);
        };
        if owner(&next, modules).as_ref() == Some(&at) {
            return Some(at);
        }
        path = next;
    }
    owner(&path, modules)
}

fn edges(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = modules(src);
    let codes: BTreeMap<&Module, String> = modules
        .iter()
        .map(|(module, file)| (module, code(&std::fs::read_to_string(file).unwrap())))
        .collect();
    let reexported: BTreeMap<Module, BTreeMap<String, Module>> = codes
        .iter()
        .map(|(module, code)| ((*module).clone(), reexports(module, code, &modules)))
        .collect();
    let mut edges = BTreeMap::new();
    for (module, code) in &codes {
        let targets: BTreeSet<Module> = paths(code)
            .into_iter()
            .filter_map(|path| absolute(module, &path, &modules))
            .filter_map(|path| definer(path, &modules, &reexported))
            // Itself, or what an ancestor's own file defines.
            .filter(|target| !module.starts_with(target))
            .collect();
        edges.insert((*module).clone(), targets);
    }
    edges
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.join("::"));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn the_crate_has_no_import_circle() {
    let edges = edges(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let found = cycles(&edges);
    assert!(
        found.is_empty(),
        "modules that import each other in a circle: {found:?}"
    );
}

#[test]
fn a_circle_is_found() {
    // The check itself. `b` names `a::Thing`, which `a` re-exports from `a::inner`, and
    // `a::inner` names `b` in a `use` group: a circle of `a::inner` and `b` (without following
    // the re-export it would wrongly take in `a`). `a::inner` naming `a::f`, its parent's own
    // item, is no edge; `c` names `a` only in a comment and in its test module, which do not
    // count.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        (
            "a/mod.rs",
            "pub mod inner;\npub use inner::Thing;\npub fn f() -> u8 { crate::c::g() }\n",
        ),
        (
            "a/inner.rs",
            "use crate::{b::{self, B}};\npub struct Thing;\npub fn k() -> u8 { super::f() }\n",
        ),
        ("b.rs", "pub struct B;\npub fn h(_: crate::a::Thing) {}\n"),
        (
            "c.rs",
            "// crate::a::f\npub fn g() -> u8 { 1 }\n#[cfg(test)]\nmod tests {\n    use crate::a::f;\n}\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(src.join(name), text).unwrap();
    }
    let found = cycles(&edges(src));
    assert_eq!(found, vec![vec!["a::inner".to_string(), "b".into()]]);
}
