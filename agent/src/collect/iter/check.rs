//! The start-up self-check: the iterator against the files on a sample of
//! each hierarchy's cgroups, every value bracketed by file reads just
//! before and just after a pass.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use agent_common::CgroupStats;

use super::{
    values::{known_from, reference, values, Fields, Target},
    IterSource, Table,
};
use crate::{
    cgroup::{read::Reader, stats::Known},
    errors::ErrorCounts,
};

/// Cgroups the self-check compares per hierarchy.
const CHECK_SAMPLE: usize = 24;

/// Attempts per cgroup before a difference counts as a mismatch: a usage
/// that rises and falls between the two file reads can leave the bracket.
const CHECK_ATTEMPTS: usize = 3;

/// How one field compares across a bracket (files before, iterator, files
/// after).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// No file on this host (or no value from the iterator): left to files.
    Absent,
    Match,
    /// A gauge that moved between the file reads and lies outside them: it
    /// may have gone up and down in between, so this proves nothing.
    Unsettled,
    Mismatch,
}

/// Counters (`monotonic`) must lie within the bracket; a gauge must equal
/// a value that held still, and within a moving bracket is taken as agreeing.
fn judge<T: PartialOrd + Copy>(
    before: Option<T>,
    iter: Option<T>,
    after: Option<T>,
    monotonic: bool,
) -> Verdict {
    match (before, iter, after) {
        (Some(b), Some(i), Some(a)) => {
            let (lo, hi) = if b <= a { (b, a) } else { (a, b) };
            if lo <= i && i <= hi {
                Verdict::Match
            } else if !monotonic && b != a {
                Verdict::Unsettled
            } else {
                Verdict::Mismatch
            }
        }
        _ => Verdict::Absent,
    }
}

/// Every field's verdict for one bracket.
fn bracket(before: &Known, iter: &Known, after: &Known) -> Vec<(u32, Verdict, String)> {
    macro_rules! bracket {
        ([$b:expr, $i:expr, $a:expr] $($bit:ident $f:ident $name:literal;)*) => {
            vec![$((
                Fields::$bit,
                judge($b.$f, $i.$f, $a.$f, Fields::MONOTONIC & Fields::$bit != 0),
                format!("files {:?} then {:?}, iterator {:?}", $b.$f, $a.$f, $i.$f),
            )),*]
        };
    }
    known_fields!(bracket, before, iter, after)
}

/// What the self-check found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub cgroups: usize,
    /// Values seen to agree: the iterator's from now on.
    pub fields: Fields,
    /// Values the iterator reads on this host that no sampled cgroup
    /// showed (none to compare, or no file for them): left to the files.
    pub unchecked: Fields,
}

impl IterSource {
    /// Compares the iterator with the files on a sample of each hierarchy's
    /// cgroups, each value bracketed by file reads just before and after.
    /// A value outside its bracket fails the check; a value this host has
    /// no file for (or the iterator cannot read) is left to the files.
    /// Also measures both kinds of pass.
    pub fn self_check(&mut self) -> Result<CheckReport, String> {
        let e = ErrorCounts::new("collection");
        let mut r = Reader::default();
        let (mut matched, mut mismatch, mut candidates) = (0u32, None, 0u32);
        let mut cgroups = 0;
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        for t in self.targets.clone() {
            // The agent's own cgroup and its ancestors are left out: there
            // a file read charges its own buffer (a page of kernel memory)
            // to the very counters it reads, so the files are the
            // perturbed side.
            candidates |= t.fields();
            let mine = own_dir(&own, &t);
            let mut sample = sample_dirs(&t.hierarchy.mount, CHECK_SAMPLE, mine.as_deref());
            // The root's cpuacct usage is the same sum in the files and
            // the kernel, and always moving: it checks the per-CPU walk
            // even in a hierarchy without children.
            if t.cpuacct {
                if let Ok(meta) = std::fs::metadata(&t.hierarchy.mount) {
                    sample.push((t.hierarchy.mount.clone(), meta.ino()));
                }
            }
            cgroups += sample.len();
            // A whole-hierarchy pass, bracketed by every sampled cgroup.
            let mut read_all = || -> Vec<Known> {
                sample
                    .iter()
                    .map(|(d, _)| reference(&t, d, &mut r, &e))
                    .collect()
            };
            let before = read_all();
            let table = Table::new(
                self.walk(&t.hierarchy.mount, Some(t.hierarchy.id))
                    .map_err(|err| {
                        format!(
                            "cgroup iterator over {}: {err}",
                            t.hierarchy.mount.display()
                        )
                    })?,
            );
            let after = read_all();
            for (i, (dir, id)) in sample.iter().enumerate() {
                let root = *dir == t.hierarchy.mount;
                let seen = |rec: Option<&CgroupStats>| match (rec, root) {
                    (Some(rec), false) => known_from(rec, &t, self.page),
                    (Some(rec), true) => Known {
                        cpu_usage_ns: values(rec, &t, self.page).cpu_usage_ns,
                        ..Known::default()
                    },
                    (None, _) => Known::default(),
                };
                let judged = t.fields() & if root { Fields::CPU_USAGE } else { !0 };
                let failed = |v: &[(u32, Verdict, String)]| {
                    v.iter()
                        .find(|(bit, verdict, _)| {
                            judged & bit != 0 && *verdict == Verdict::Mismatch
                        })
                        .cloned()
                };
                let mut verdicts = bracket(&before[i], &seen(table.get(*id)), &after[i]);
                // Outside the wide bracket: again, tightly, with a pass
                // rooted at that cgroup.
                for _ in 0..CHECK_ATTEMPTS {
                    if failed(&verdicts).is_none() {
                        break;
                    }
                    let b = reference(&t, dir, &mut r, &e);
                    let pass = self.walk(dir, None).ok();
                    let a = reference(&t, dir, &mut r, &e);
                    let rec = pass
                        .as_ref()
                        .and_then(|p| p.first())
                        .filter(|rec| rec.id == *id);
                    verdicts = bracket(&b, &seen(rec), &a);
                }
                if let Some((bit, _, detail)) = failed(&verdicts) {
                    let name = Fields::NAMES
                        .iter()
                        .find(|n| n.0 == bit)
                        .map_or("?", |n| n.1);
                    mismatch.get_or_insert(format!("{}: {name}: {detail}", dir.display()));
                }
                for (bit, verdict, _) in verdicts {
                    if judged & bit != 0 && verdict == Verdict::Match {
                        matched |= bit;
                    }
                }
            }
            // The cost of a pass rooted at one cgroup, for [`Self::round`].
            if let Some((dir, _)) = sample.iter().find(|(d, _)| *d != t.hierarchy.mount) {
                let _ = self.walk(dir, None);
            }
        }
        if let Some(m) = mismatch {
            return Err(m);
        }
        // Only what was seen to agree: a value this host has no file for,
        // or no sampled cgroup showed, stays with the files.
        self.fields = Fields(matched);
        Ok(CheckReport {
            cgroups,
            fields: self.fields,
            unchecked: Fields(candidates & !matched),
        })
    }
}

/// The agent's directory in `t` (from `/proc/self/cgroup`'s text).
fn own_dir(proc_self_cgroup: &str, t: &Target) -> Option<PathBuf> {
    let path = t.hierarchy.path_of(proc_self_cgroup)?;
    Some(t.hierarchy.dir(path))
}

/// Up to `n` cgroup directories below `root` (not `root` itself),
/// breadth first, with their kernfs ids; none that holds `skip`.
fn sample_dirs(root: &Path, n: usize, skip: Option<&Path>) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_dir() {
                continue;
            }
            let path = entry.path();
            if skip.is_some_and(|s| s.starts_with(&path)) {
                queue.push_back(path);
                continue;
            }
            if out.len() >= n {
                return out;
            }
            out.push((path.clone(), meta.ino()));
            queue.push_back(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{super::values::testing::target, *};

    #[test]
    fn brackets() {
        assert_eq!(judge(Some(5), Some(5), Some(5), true), Verdict::Match);
        assert_eq!(judge(Some(5), Some(7), Some(9), true), Verdict::Match);
        let fell = judge(Some(9), Some(7), Some(5), false);
        assert_eq!(fell, Verdict::Match, "usage may fall");
        assert_eq!(judge(Some(5), Some(4), Some(9), true), Verdict::Mismatch);
        let dipped = judge(Some(5), Some(4), Some(9), false);
        assert_eq!(dipped, Verdict::Unsettled, "a gauge may dip between reads");
        assert_eq!(judge(Some(5), Some(4), Some(5), false), Verdict::Mismatch);
        assert_eq!(judge(None, Some(4), None, true), Verdict::Absent);
        assert_eq!(judge(Some(4), None, Some(4), true), Verdict::Absent);
        let (none, some) = (Some(None::<u64>), Some(Some(3u64)));
        assert_eq!(judge(none, none, none, false), Verdict::Match);
        assert_eq!(judge(some, none, some, false), Verdict::Mismatch);
    }

    #[test]
    fn the_self_check_leaves_out_the_agents_own_cgroups() {
        let root = tempfile::tempdir().unwrap();
        for d in ["a/b", "a/c", "d", "e/f"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let mut t = target(false);
        t.hierarchy.mount = root.path().to_owned();
        let own = own_dir("0::/\n4:memory:/a/b\n2:cpuacct:/x\n", &t).unwrap();
        assert_eq!(own, root.path().join("a/b"));
        let mut got: Vec<String> = sample_dirs(root.path(), 10, Some(&own))
            .into_iter()
            .map(|(d, _)| d.strip_prefix(root.path()).unwrap().display().to_string())
            .collect();
        got.sort();
        assert_eq!(got, ["a/c", "d", "e", "e/f"]);
        assert_eq!(sample_dirs(root.path(), 2, None).len(), 2);
    }
}
