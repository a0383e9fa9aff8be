//! The agent's module graph, kept free of cycles: at every level of the
//! module tree, the children of one module (files and folders) may depend
//! on each other only one way. A reference counts at the level where the
//! two module paths part (`crate::a::x` used in `a::y` is an edge `x → y`
//! inside `a`); test code is left out.

#![cfg(test)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use syn::visit::Visit;

type ModPath = Vec<String>;

/// Every file module of a crate whose root is `src/main.rs` or `src/lib.rs`,
/// with its parsed source.
fn modules(src: &Path) -> BTreeMap<ModPath, syn::File> {
    let mut out = BTreeMap::new();
    collect(src, src, &mut out);
    out
}

fn collect(src: &Path, dir: &Path, out: &mut BTreeMap<ModPath, syn::File>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(src, &path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(src).unwrap().with_extension("");
        let mut m: ModPath = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(m.last().map(String::as_str), Some("mod" | "main" | "lib")) {
            m.pop();
        }
        let text = fs::read_to_string(&path).unwrap();
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        out.insert(m, file);
    }
}

/// Paths a file names, outside `#[cfg(test)]`, as written.
#[derive(Default)]
struct Names(Vec<Vec<String>>);

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

impl Names {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut v = prefix.clone();
                v.push(n.ident.to_string());
                self.0.push(v);
            }
            syn::UseTree::Rename(r) => {
                let mut v = prefix.clone();
                v.push(r.ident.to_string());
                self.0.push(v);
            }
            syn::UseTree::Glob(_) => self.0.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Names {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Const(c) => &c.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.0
            .push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }
}

/// The module a path written in module `at` refers to, if it is one of
/// `known` (the deepest that is).
fn target(at: &ModPath, path: &[String], known: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut abs: ModPath = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "super" => at[..at.len().checked_sub(1)?].to_vec(),
        "self" => at.clone(),
        _ => return None,
    };
    let mut rest = &path[1..];
    while rest.first().is_some_and(|s| s == "super") {
        abs.pop();
        rest = &rest[1..];
    }
    let mut best = None;
    for seg in rest {
        abs.push(seg.clone());
        if known.contains(&abs) {
            best = Some(abs.clone());
        } else {
            break;
        }
    }
    best
}

/// `level → (from child → to children)`.
type Graph = BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>>;

fn graph(files: &BTreeMap<ModPath, syn::File>) -> Graph {
    let known: BTreeSet<ModPath> = files.keys().cloned().collect();
    let mut g = Graph::new();
    for (at, file) in files {
        let mut names = Names::default();
        names.visit_file(file);
        for path in &names.0 {
            let Some(to) = target(at, path, &known) else {
                continue;
            };
            let common = at.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common < at.len() && common < to.len() {
                g.entry(at[..common].to_vec())
                    .or_default()
                    .entry(at[common].clone())
                    .or_default()
                    .insert(to[common].clone());
            }
        }
    }
    g
}

/// Every cycle found, as `level: a → b → a`.
fn cycles(g: &Graph) -> Vec<String> {
    fn dfs(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_owned());
            found.push(c);
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            dfs(m, edges, stack, done, found);
        }
        stack.pop();
        done.insert(n.to_owned());
    }
    let mut out = Vec::new();
    for (level, edges) in g {
        let (mut done, mut found) = (BTreeSet::new(), Vec::new());
        for n in edges.keys() {
            dfs(n, edges, &mut Vec::new(), &mut done, &mut found);
        }
        let name = if level.is_empty() {
            "crate".to_owned()
        } else {
            level.join("::")
        };
        out.extend(found.iter().map(|c| format!("{name}: {}", c.join(" → "))));
    }
    out
}

#[test]
fn the_agent_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src");
    let files = modules(&src);
    assert!(files.len() > 40, "{} modules found", files.len());
    let found = cycles(&graph(&files));
    assert!(
        found.is_empty(),
        "module cycles (move what both sides need into a module of its own):\n{}",
        found.join("\n")
    );
}

#[test]
fn finds_cycles_at_each_level_and_ignores_tests_and_nesting() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    write("main.rs", "mod a; mod b; mod c; use crate::a::x::X;");
    write("a/mod.rs", "pub mod x; pub mod y; use self::x::X;");
    write("a/x.rs", "use super::y::Y; pub struct X;");
    write("a/y.rs", "pub struct Y; fn f() { let _ = super::x::X; }");
    write("b.rs", "use crate::{c::C, a::x::X};");
    write(
        "c.rs",
        "pub struct C; #[cfg(test)] mod tests { use crate::b; }",
    );
    let found = cycles(&graph(&modules(dir.path())));
    assert_eq!(found, ["a: x → y → x"]);

    write("c.rs", "pub struct C; fn f() -> crate::b::B { todo!() }");
    let found = cycles(&graph(&modules(dir.path())));
    assert_eq!(found, ["crate: b → c → b", "a: x → y → x"]);
}
