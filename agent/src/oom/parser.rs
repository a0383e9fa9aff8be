//! The kernel's OOM report, parsed from its log lines (3.x to 6.x).
//!
//! The lines that matter, oldest kernels first:
//! - `<comm> invoked oom-killer: gfp_mask=…` starts a report;
//! - `Task in /X killed as a result of limit of /Y` (before 5.0);
//! - `oom-kill:constraint=…,oom_memcg=/Y,task_memcg=/X,task=…,pid=…,uid=…`
//!   (5.0+; `global_oom` instead of `oom_memcg=` for a machine-wide OOM);
//! - `Tasks in /X are going to be killed due to memory.oom.group set`;
//! - `[Memory cgroup out of memory: ]Killed process N (comm) total-vm:…`,
//!   once per killed task.
//!
//! Unlike cAdvisor's regexes this keeps `task_memcg` for global OOMs,
//! reports each task of a group kill, and pairs nothing across reports.

/// One killed task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillReport {
    pub pid: u32,
    pub comm: String,
    /// The killed task's memory cgroup, as the kernel printed it (relative
    /// to the memory hierarchy's root); `None` when the kernel did not say.
    pub task_memcg: Option<String>,
    /// The memory cgroup whose limit was hit; `None` for a global OOM.
    pub oom_memcg: Option<String>,
    /// `CONSTRAINT_MEMCG`, `CONSTRAINT_NONE`, … (empty when unknown).
    pub constraint: String,
    /// Kernel timestamp of the line that completed the report (µs since
    /// boot), when the line came from /dev/kmsg.
    pub ts_us: Option<u64>,
}

#[derive(Debug, Default)]
struct Report {
    task_memcg: Option<String>,
    oom_memcg: Option<String>,
    constraint: String,
    group: Option<String>,
    /// When the group line or its last member's kill came (µs since boot,
    /// from kmsg).
    group_at: Option<u64>,
    /// Pids already reported from the `oom-kill:` line.
    reported: Vec<u32>,
    /// The victim's `Killed process` line was seen: later ones belong to
    /// this report only in a group kill (whose members have no summary).
    victim_done: bool,
}

/// Feeds on log messages one at a time and returns each kill as soon as a
/// line completes it.
#[derive(Debug, Default)]
pub struct Parser {
    current: Option<Report>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// One message (the text after the kmsg header or a syslog prefix).
    pub fn feed(&mut self, msg: &str, ts_us: Option<u64>) -> Option<KillReport> {
        if msg.contains("invoked oom-killer:") {
            self.current = Some(Report::default());
            return None;
        }
        if let Some(at) = msg.find("oom-kill:") {
            let summary = parse_summary(&msg[at + "oom-kill:".len()..])?;
            let report = self.current.get_or_insert_with(Report::default);
            report.task_memcg = summary.task_memcg.clone();
            report.oom_memcg = summary.oom_memcg.clone();
            report.constraint = summary.constraint.clone();
            if let Some(pid) = summary.pid {
                report.reported.push(pid);
                return Some(KillReport {
                    pid,
                    comm: summary.task,
                    task_memcg: summary.task_memcg,
                    oom_memcg: summary.oom_memcg,
                    constraint: summary.constraint,
                    ts_us,
                });
            }
            return None;
        }
        if let Some(rest) = msg.split_once("Task in ").map(|(_, r)| r) {
            if let Some((task, limit)) = rest.split_once(" killed as a result of limit of ") {
                let report = self.current.get_or_insert_with(Report::default);
                report.task_memcg = Some(absolute(task.trim()));
                report.oom_memcg = Some(absolute(limit.trim()));
                report.constraint = "CONSTRAINT_MEMCG".into();
                return None;
            }
        }
        if let Some(rest) = msg.split_once("Tasks in ").map(|(_, r)| r) {
            if let Some((group, _)) =
                rest.split_once(" are going to be killed due to memory.oom.group set")
            {
                let report = self.current.get_or_insert_with(Report::default);
                report.group = Some(absolute(group.trim()));
                report.group_at = ts_us;
                return None;
            }
        }
        let (pid, comm) = parse_killed(msg)?;
        let report = self.current.get_or_insert_with(Report::default);
        if report.reported.contains(&pid) {
            // The same kill the `oom-kill:` line already reported.
            report.victim_done = true;
            return None;
        }
        // The kernel kills a group's members in one loop right after its
        // line, under the OOM lock, so no other report comes between them;
        // a kill long after the last one is another OOM's. The gap is
        // measured from the previous kill, not from the group's line: a
        // group of thousands printing to a slow console takes seconds.
        let member = report.group.is_some()
            && match (report.group_at, ts_us) {
                (Some(at), Some(now)) => now.saturating_sub(at) <= GROUP_KILL_GAP_US,
                _ => true,
            };
        if member && ts_us.is_some() {
            report.group_at = ts_us;
        }
        if report.victim_done && !member {
            // A kill without its own report (the kernel rate-limits the
            // report, 10 per 5 s, never this line): the last report's
            // cgroups are not its; the caller asks /proc or counts it
            // unattributed.
            return Some(KillReport {
                pid,
                comm,
                task_memcg: None,
                oom_memcg: None,
                constraint: String::new(),
                ts_us,
            });
        }
        report.victim_done = true;
        report.reported.push(pid);
        Some(KillReport {
            pid,
            comm,
            task_memcg: report.group.clone().or_else(|| report.task_memcg.clone()),
            oom_memcg: report.oom_memcg.clone(),
            constraint: if report.constraint.is_empty() {
                "CONSTRAINT_NONE".into()
            } else {
                report.constraint.clone()
            },
            ts_us,
        })
    }
}

/// The longest gap between a `memory.oom.group` line or a member's kill
/// and the next member's kill.
const GROUP_KILL_GAP_US: u64 = 1_000_000;

/// A task name's longest length: the kernel's `TASK_COMM_LEN` (16) less
/// its NUL. Written here because this file also builds alone, in the fuzz
/// target.
const TASK_COMM_MAX: usize = 15;

fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

#[derive(Debug, Default)]
struct Summary {
    constraint: String,
    oom_memcg: Option<String>,
    task_memcg: Option<String>,
    task: String,
    pid: Option<u32>,
}

/// `constraint=…,nodemask=…,cpuset=…,mems_allowed=…,oom_memcg=…|global_oom,
/// task_memcg=…,task=…,pid=…,uid=…`. Values can hold commas (a task name, a
/// path), so the fixed keys are found from both ends rather than by split.
fn parse_summary(s: &str) -> Option<Summary> {
    let s = s.trim_end();
    let constraint = s.strip_prefix("constraint=")?;
    let constraint = &constraint[..constraint.find(',').unwrap_or(constraint.len())];
    let mut out = Summary {
        constraint: constraint.to_owned(),
        ..Summary::default()
    };
    let (head, uid_part) = s.rsplit_once(",uid=").unwrap_or((s, ""));
    let _ = uid_part;
    let (head, pid) = head.rsplit_once(",pid=")?;
    out.pid = pid.trim().parse().ok();
    // The name (at most 15 bytes) may itself hold `,task=`: the first
    // `,task=` that leaves a name that short (a cgroup path holding it is
    // far less likely than a task naming itself so).
    let at = head
        .match_indices(",task=")
        .map(|(i, _)| i)
        .find(|i| head.len() - (i + ",task=".len()) <= TASK_COMM_MAX)
        .or_else(|| head.rfind(",task="))?;
    let (head, task) = (&head[..at], &head[at + ",task=".len()..]);
    out.task = task.to_owned();
    if let Some((before, memcg)) = head.split_once(",task_memcg=") {
        out.task_memcg = Some(absolute(memcg));
        if let Some((_, oom)) = before.split_once(",oom_memcg=") {
            out.oom_memcg = Some(absolute(oom));
        }
    }
    Some(out)
}

/// `Killed process N (comm)`: the name runs to the last `)` on the line,
/// since names may hold spaces and parentheses.
fn parse_killed(msg: &str) -> Option<(u32, String)> {
    let rest = &msg[msg.find("Killed process ")? + "Killed process ".len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let pid = rest[..digits].parse().ok()?;
    let rest = rest[digits..].strip_prefix(" (")?;
    let end = rest.rfind(')')?;
    Some((pid, rest[..end].to_owned()))
}

/// One /dev/kmsg record: `prio,seq,ts_us,flags[,…];message` (continuation
/// lines of key=value pairs, which start with a space, are dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgRecord<'a> {
    pub seq: u64,
    pub ts_us: u64,
    pub msg: &'a str,
}

pub fn parse_record(record: &str) -> Option<KmsgRecord<'_>> {
    let first = record.split('\n').next()?;
    let (header, msg) = first.split_once(';')?;
    let mut fields = header.split(',');
    let _prio: u32 = fields.next()?.trim().parse().ok()?;
    let seq = fields.next()?.trim().parse().ok()?;
    let ts_us = fields.next()?.trim().parse().ok()?;
    Some(KmsgRecord { seq, ts_us, msg })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kmsg-oom");

    /// Parses a file of log lines (any prefix) or kmsg records.
    fn parse_file(name: &str) -> Vec<KillReport> {
        let path = Path::new(TESTDATA).join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        parse_text(&text)
    }

    fn parse_text(text: &str) -> Vec<KillReport> {
        let mut p = Parser::new();
        text.lines()
            .filter_map(|line| match parse_record(line) {
                Some(r) => p.feed(r.msg, Some(r.ts_us)),
                None => p.feed(line, None),
            })
            .collect()
    }

    fn one(r: &[KillReport]) -> &KillReport {
        assert_eq!(r.len(), 1, "{r:#?}");
        &r[0]
    }

    #[test]
    fn this_machines_6_18_memcg_oom() {
        let r = parse_text(
            "4,594,751023714,-;memhog invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n\
             6,673,751024248,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/ebpfproto/oom1,task_memcg=/ebpfproto/oom1,task=memhog,pid=700,uid=0\n\
             3,674,751024319,-;Memory cgroup out of memory: Killed process 700 (memhog) total-vm:68268kB, anon-rss:65280kB, file-rss:1248kB, shmem-rss:0kB, UID:0 pgtables:172kB oom_score_adj:0\n",
        );
        let k = one(&r);
        assert_eq!((k.pid, k.comm.as_str()), (700, "memhog"));
        assert_eq!(k.task_memcg.as_deref(), Some("/ebpfproto/oom1"));
        assert_eq!(k.oom_memcg.as_deref(), Some("/ebpfproto/oom1"));
        assert_eq!(k.constraint, "CONSTRAINT_MEMCG");
        assert_eq!(k.ts_us, Some(751024248));
    }

    #[test]
    fn nested_limit_on_the_parent() {
        let r = parse_text(
            "invoked oom-killer: gfp_mask=0xcc0\n\
             oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/p,task_memcg=/p/child,task=hog,pid=9,uid=0\n\
             Memory cgroup out of memory: Killed process 9 (hog) total-vm:1kB\n",
        );
        let k = one(&r);
        assert_eq!(k.oom_memcg.as_deref(), Some("/p"));
        assert_eq!(k.task_memcg.as_deref(), Some("/p/child"));
    }

    #[test]
    fn cadvisor_consts_5x_line() {
        let r = parse_file("oomparser_test.go__consts.txt");
        // startLine, endLine (a kill), the legacy line, then the 5.x line.
        let k = r.last().unwrap();
        assert_eq!((k.pid, k.comm.as_str()), (966, "manager"));
        assert_eq!(
            k.task_memcg.as_deref(),
            Some("/kubepods/burstable/podfbdfe8e3-1c87-4ff2-907c-b2ec8e25d012/ef807430361e6e82b45db92e2e9b6fbec98f419b12c591e655c1a725565e73a8")
        );
        assert_eq!(
            k.oom_memcg.as_deref(),
            Some("/kubepods/burstable/podfbdfe8e3-1c87-4ff2-907c-b2ec8e25d012")
        );
        assert_eq!(r[0].pid, 19667);
        assert_eq!(r[0].comm, "evil-program2");
    }

    #[test]
    fn kernel_3_13_memcg_oom() {
        for f in [
            "containerOomExampleLog.txt",
            "oomparser_test.go__TestStreamOOMs_case1_memcg-oom_kernel-3.13.txt",
        ] {
            let r = parse_file(f);
            let k = one(&r);
            assert_eq!((k.pid, k.comm.as_str()), (13536, "memorymonster"), "{f}");
            assert_eq!(k.task_memcg.as_deref(), Some("/mem2"), "{f}");
            assert_eq!(k.oom_memcg.as_deref(), Some("/mem2"), "{f}");
        }
    }

    #[test]
    fn kernel_3_13_global_oom() {
        for f in [
            "systemOomExampleLog.txt",
            "oomparser_test.go__TestStreamOOMs_case2_system-oom_kernel-3.13.txt",
        ] {
            let r = parse_file(f);
            let k = one(&r);
            assert_eq!((k.pid, k.comm.as_str()), (1532, "badsysprogram"), "{f}");
            assert_eq!(k.oom_memcg, None, "{f}");
            assert_eq!(k.task_memcg, None, "{f}");
        }
    }

    #[test]
    fn kernel_4_8_two_docker_ooms_with_noise() {
        let mut r =
            parse_file("oomparser_test.go__TestStreamOOMs_case3a_docker-memcg-oom_kernel-4.8.txt");
        r.extend(parse_file(
            "oomparser_test.go__TestStreamOOMs_case3b_docker-memcg-oom_kernel-4.8.txt",
        ));
        let pids: Vec<u32> = r.iter().map(|k| k.pid).collect();
        assert_eq!(pids, [1381, 1667]);
        assert!(r[0]
            .task_memcg
            .as_deref()
            .unwrap()
            .starts_with("/docker/2e088f"));
        assert!(r[1]
            .task_memcg
            .as_deref()
            .unwrap()
            .starts_with("/docker/6c6fca"));
    }

    #[test]
    fn process_names_with_spaces_and_parentheses() {
        let text = std::fs::read_to_string(
            Path::new(TESTDATA).join("oomparser_test.go__TestLastLineRegex_expanded.txt"),
        )
        .unwrap();
        let names: Vec<String> = text
            .lines()
            .filter_map(|l| parse_killed(l).map(|k| k.1))
            .collect();
        assert_eq!(
            names,
            [
                "foo",
                "python3.4",
                "foo-bar",
                "Plex Media Server",
                "x86_64-pc-linux-gnu-c++-5.4.0",
                "[",
                "()",
                "\"with quotes\""
            ]
        );
    }

    #[test]
    fn oomanalyser_kernels() {
        let k = parse_file("OOMAnalyser/example_rhel7.txt");
        assert_eq!(
            (
                one(&k).pid,
                one(&k).comm.as_str(),
                one(&k).oom_memcg.as_deref()
            ),
            (6576, "mysqld", None)
        );
        // 5.13 global OOM: task_memcg kept (cAdvisor loses it).
        let k = parse_file("OOMAnalyser/example_ubuntu2110.txt");
        let k = one(&k);
        assert_eq!(k.pid, 651);
        assert_eq!(k.oom_memcg, None);
        assert_eq!(
            k.task_memcg.as_deref(),
            Some("/system.slice/unattended-upgrades.service")
        );
        let k = parse_file("OOMAnalyser/example_proxmox_cgroup_oom.txt");
        let k = one(&k);
        assert_eq!((k.pid, k.comm.as_str()), (3902942, "php-fpm"));
        assert_eq!(k.oom_memcg.as_deref(), Some("/lxc/39004"));
        assert!(k.task_memcg.as_deref().unwrap().ends_with(
            "docker-a59e4e7d3090c04c6ce5a4b7a8bc85228eb9b96ac00b1284643a8c7c11dda661.scope"
        ));
        let k = parse_file("OOMAnalyser/example_archlinux_6_1_1.txt");
        let k = one(&k);
        assert_eq!(k.pid, 473206);
        assert_eq!(
            k.task_memcg.as_deref(),
            Some("/user.slice/user-504.slice/session-2.scope")
        );
    }

    #[test]
    fn group_kill_reports_every_task() {
        let r = parse_text(
            "a invoked oom-killer: gfp_mask=0xcc0\n\
             oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/pod,task_memcg=/pod/c1,task=a,pid=10,uid=0\n\
             Memory cgroup out of memory: Killed process 10 (a) total-vm:1kB\n\
             Tasks in /pod are going to be killed due to memory.oom.group set\n\
             Memory cgroup out of memory: Killed process 11 (b) total-vm:1kB\n\
             Memory cgroup out of memory: Killed process 12 (c, d) total-vm:1kB\n",
        );
        let got: Vec<(u32, &str, Option<&str>)> = r
            .iter()
            .map(|k| (k.pid, k.comm.as_str(), k.task_memcg.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (10, "a", Some("/pod/c1")),
                (11, "b", Some("/pod")),
                (12, "c, d", Some("/pod"))
            ]
        );
    }

    /// After the kernel rate-limits its reports (10 per 5 s) a kill comes
    /// as a bare `Killed process` line: never charged to the last report.
    #[test]
    fn a_bare_kill_is_not_charged_to_the_last_report() {
        let r = parse_text(
            "4,1,100,-;a invoked oom-killer: gfp_mask=0xcc0\n\
             6,2,101,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a,task_memcg=/a,task=a,pid=10,uid=0\n\
             3,3,102,-;Memory cgroup out of memory: Killed process 10 (a) total-vm:1kB\n\
             3,4,9000000,-;Memory cgroup out of memory: Killed process 20 (b) total-vm:1kB\n",
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].task_memcg.as_deref(), Some("/a"));
        assert_eq!((r[1].pid, r[1].task_memcg.as_deref()), (20, None));
        assert_eq!(r[1].oom_memcg, None);
        // A group's line covers the kills right after it, not a later OOM's.
        let r = parse_text(
            "6,1,100,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/g,task_memcg=/g/c,task=a,pid=10,uid=0\n\
             3,2,101,-;Memory cgroup out of memory: Killed process 10 (a) total-vm:1kB\n\
             3,3,102,-;Tasks in /g are going to be killed due to memory.oom.group set\n\
             3,4,103,-;Memory cgroup out of memory: Killed process 11 (b) total-vm:1kB\n\
             3,5,9000000,-;Memory cgroup out of memory: Killed process 30 (z) total-vm:1kB\n",
        );
        let got: Vec<(u32, Option<&str>)> =
            r.iter().map(|k| (k.pid, k.task_memcg.as_deref())).collect();
        assert_eq!(got, [(10, Some("/g/c")), (11, Some("/g")), (30, None)]);
    }

    /// A group of thousands killed in one loop that takes seconds (each
    /// line printed to a slow console): every member is the group's, and
    /// a kill after a pause is not.
    #[test]
    fn a_long_group_kill_keeps_every_member() {
        let mut text = String::from(
            "6,1,100,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/g,task_memcg=/g,task=a,pid=10,uid=0\n\
             3,2,101,-;Memory cgroup out of memory: Killed process 10 (a) total-vm:1kB\n\
             3,3,102,-;Tasks in /g are going to be killed due to memory.oom.group set\n",
        );
        // 3,000 members 2 ms apart: 6 s in all.
        for i in 0..3_000u32 {
            text += &format!(
                "3,{},{},-;Memory cgroup out of memory: Killed process {} (m) total-vm:1kB\n",
                4 + i,
                102 + 2_000 * u64::from(i + 1),
                100 + i
            );
        }
        text +=
            "3,9999,20000000,-;Memory cgroup out of memory: Killed process 9 (z) total-vm:1kB\n";
        let r = parse_text(&text);
        assert_eq!(r.len(), 3_002);
        assert!(r[..3_001]
            .iter()
            .all(|k| k.task_memcg.as_deref() == Some("/g")));
        assert_eq!((r[3_001].pid, r[3_001].task_memcg.as_deref()), (9, None));
    }

    #[test]
    fn task_comm_max_is_the_kernels() {
        assert_eq!(TASK_COMM_MAX, agent_common::TASK_COMM_LEN - 1);
    }

    #[test]
    fn a_task_named_with_task_equals_keeps_its_name() {
        let mut p = Parser::new();
        let k = p
            .feed(
                "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a,task_memcg=/a,task=x,task=y,pid=7,uid=0",
                None,
            )
            .unwrap();
        assert_eq!(
            (k.comm.as_str(), k.task_memcg.as_deref()),
            ("x,task=y", Some("/a"))
        );
    }

    #[test]
    fn odd_input_yields_nothing_and_never_panics() {
        let mut p = Parser::new();
        for line in [
            "",
            "oom-kill:",
            "oom-kill:constraint=X",
            "oom-kill:constraint=C,task=a,pid=notanumber,uid=0",
            "Killed process",
            "Killed process 12",
            "Killed process x (y)",
            "Killed process 12 (unterminated",
            "Task in /a killed",
            "Tasks in ",
            "\u{0}\u{fffd}",
        ] {
            let _ = p.feed(line, None);
        }
        assert!(parse_record("garbage").is_none());
        assert!(parse_record("6,x,1,-;msg").is_none());
        let r = parse_record("6,1804,47700428483,-;wlp4s0: associated\n SUBSYSTEM=net").unwrap();
        assert_eq!(
            (r.seq, r.ts_us, r.msg),
            (1804, 47700428483, "wlp4s0: associated")
        );
        assert!(parse_file("sample1.kmsg").is_empty());
        // A task name with ",pid=" in it still parses from the end.
        let s = parse_summary("constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a,task_memcg=/a,task=x,pid=1,pid=7,uid=0").unwrap();
        assert_eq!((s.pid, s.task.as_str()), (Some(7), "x,pid=1"));
    }
}
