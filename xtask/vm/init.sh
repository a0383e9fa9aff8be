#!/bin/busybox sh
# PID 1 of a `cargo xtask vm` guest: mounts the layout named on the kernel
# command line (cgscope.layout=v1|v2), starts the release agent, makes a
# real OOM kill in a 32 MiB cgroup and prints one `CHECK <name> ok|FAIL
# <detail>` line per check, then the agent's /metrics between markers for
# the host to validate. With cgscope.tests=1 it then mounts the host's
# root (read-only, 9p) and runs the host's test script chrooted into it.
# Everything here runs in the guest only.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tracefs none /sys/kernel/tracing
ip link set lo up
layout=$(sed -n 's/.*cgscope\.layout=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
CG=/sys/fs/cgroup

check() { # name, condition result (0 = ok), detail
    if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 FAIL $3"; fi
}
limit() { # cgroup (relative), bytes
    if [ "$layout" = v2 ]; then echo "$2" > $CG/$1/memory.max
    else echo "$2" > $CG/memory/$1/memory.limit_in_bytes; fi
}
mkcg() { # cgroup (relative), in every hierarchy
    if [ "$layout" = v2 ]; then mkdir -p $CG/$1
    else for c in cpu,cpuacct memory pids blkio; do mkdir -p $CG/$c/$1; done; fi
}
procs() { # cgroup: its cgroup.procs files
    if [ "$layout" = v2 ]; then printf '%s ' $CG/$1/cgroup.procs
    else for c in cpu,cpuacct memory pids blkio; do printf '%s ' $CG/$c/$1/cgroup.procs; done; fi
}
kernel_kills() { # cgroup: the kernel's own count of its tasks' OOM kills
    if [ "$layout" = v2 ]; then f=$CG/$1/memory.events.local; else f=$CG/memory/$1/memory.oom_control; fi
    sed -n 's/^oom_kill //p' $f
}
metric() { # family, cgroup id: the value of its series
    wget -qO- 127.0.0.1:8080/metrics | grep "^$1{" | grep -F "id=\"$2\"" | head -1 | sed 's/.* //'
}
agent_metric() { # series: its value (a family's name, or name{labels})
    wget -qO- 127.0.0.1:8080/metrics/agent | grep -F "$1" | grep -v '^#' | head -1 | sed 's/.* //'
}

if [ "$layout" = v2 ]; then
    mount -t cgroup2 none $CG
    echo "+memory +pids +cpu +io" > $CG/cgroup.subtree_control
    # A Kubernetes-shaped tree (systemd driver), controllers enabled down it.
    pod=kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice
    mkdir -p $CG/$pod
    for d in kubepods.slice kubepods.slice/kubepods-burstable.slice $pod; do
        echo "+memory +pids +cpu +io" > $CG/$d/cgroup.subtree_control
    done
else
    # One hierarchy per controller, cpu and cpuacct together, as systemd does.
    mount -t tmpfs cgroup $CG
    for c in cpu,cpuacct memory pids blkio devices freezer; do
        mkdir -p $CG/$c
        mount -t cgroup -o $c cgroup $CG/$c
    done
    # systemd makes v1 memory limits hierarchical (before 5.16 they are not
    # by default: a parent's limit would not hold its children).
    echo 1 > $CG/memory/memory.use_hierarchy
    ln -s cpu,cpuacct $CG/cpu
    ln -s cpu,cpuacct $CG/cpuacct
    pod=kubepods/burstable/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789
fi
mkcg vmtest
limit vmtest 33554432
echo "kernel $(uname -r) layout $layout"

/cgscope --listen 127.0.0.1:8080 --housekeeping-interval 1s --max-housekeeping-interval 1s \
    > /tmp/agent.log 2>&1 &
agent=$!
up=1
for i in $(seq 90); do
    wget -qO- 127.0.0.1:8080/healthz > /dev/null 2>&1 && { up=0; break; }
    sleep 1
done
check agent_healthy $up "after ${i}s"

# A cgroup created while the agent runs is discovered.
container=$pod/cri-containerd-4f1e2d3c4b5a69788796a5b4c3d2e1f04f1e2d3c4b5a69788796a5b4c3d2e1f0
[ "$layout" = v1 ] && container=$pod/4f1e2d3c4b5a69788796a5b4c3d2e1f04f1e2d3c4b5a69788796a5b4c3d2e1f0
mkcg $container
found=1
for i in $(seq 20); do
    [ -n "$(metric container_memory_usage_bytes /$container)" ] && { found=0; break; }
    sleep 1
done
check discovery $found "ebpf $(agent_metric 'cgscope_mode{subsystem="discovery",mode="ebpf"}')"

# A real OOM kill, of a task of this script's own, in its 32 MiB cgroup.
sh -c "for f in $(procs vmtest); do echo \$\$ > \$f; done; exec tail /dev/zero"
hog=$?
check hog_killed $([ $hog = 137 ] && echo 0 || echo 1) "exit $hog"
k=$(kernel_kills vmtest)
check kernel_counted $([ "$k" = 1 ] && echo 0 || echo 1) "oom_kill $k"
counted=1
for i in $(seq 20); do
    [ "$(metric container_oom_events_total /vmtest)" = 1 ] && { counted=0; break; }
    sleep 1
done
mode=$(wget -qO- 127.0.0.1:8080/metrics/agent | grep '^cgscope_mode{subsystem="oom"' | grep ' 1$' | sed 's/.*mode="\([a-z]*\)".*/\1/')
check oom_counted $counted "source $mode"
sleep 6
check oom_counted_once $([ "$(metric container_oom_events_total /vmtest)" = 1 ] && echo 0 || echo 1) ""
others=$(wget -qO- 127.0.0.1:8080/metrics | grep '^container_oom_events_total{' | grep -vF 'id="/vmtest"' | grep -v ' 0$' | wc -l)
check oom_not_misattributed $others "$others other series counted a kill"
# Past the floor's grace (5 s): where the kernel hands the program the
# task itself, the source delivered the kill. Where it passes only a pid
# (before 6.8), the victim may be gone before /proc is read, and the
# kernel's own counter (the floor) counts it: said, not checked.
missed=$(agent_metric cgscope_oom_missed_total)
if grep -q 'program="mark_victim_btf"' /tmp/agent.log; then
    check oom_source_delivered $([ "$missed" = 0 ] && echo 0 || echo 1) "missed $missed"
else
    echo "INFO pid-only mark_victim: kills counted from the kernel counter: $missed"
fi

collector=$(wget -qO- 127.0.0.1:8080/metrics/agent | grep '^cgscope_mode{subsystem="collector"' | grep ' 1$' | sed 's/.*mode="\([a-z]*\)".*/\1/')
covered=$(sed -n 's/.*iterator agrees.*values=\([a-z_,]*\).*/\1/p' /tmp/agent.log)
# The collector says iter only when the iterator covers some value.
honest=1
{ [ "$collector" = files ] || [ -n "$covered" ]; } && honest=0
check collector_honest $honest "$collector ${covered:-no values}"
echo "== agent warnings"
grep -E ' (WARN|ERROR) ' /tmp/agent.log | cut -c1-400
echo "== metrics begin"
wget -qO- 127.0.0.1:8080/metrics
echo "== metrics end"
kill $agent

if grep -q 'cgscope.tests=1' /proc/cmdline; then
    # Kernel lines (OOM reports) on the console would break the tests' lines.
    echo 1 > /proc/sys/kernel/printk
    for m in /modules/*.ko; do
        [ -e "$m" ] && { insmod "$m" || echo "== insmod $m failed"; }
    done
    for i in /sys/class/net/*; do ip link set "${i##*/}" up; done
    mkdir -p /host
    if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host; then
        mount --rbind /proc /host/proc
        mount --rbind /sys /host/sys
        mount --rbind /dev /host/dev
        # Writable /tmp and /run, with the workspace kept visible when it
        # lies under one of them (a CI checkout in /tmp).
        ws=$(cat /workspace)
        mkdir -p /ws && mount --bind "/host$ws" /ws
        mount -t tmpfs tmp /host/tmp
        mount -t tmpfs run /host/run
        mkdir -p "/host$ws" 2> /dev/null
        mount --bind /ws "/host$ws"
        cp /run-tests.sh /host/tmp/run-tests.sh
        chroot /host /bin/sh /tmp/run-tests.sh
    else
        echo "== the host's root could not be mounted over 9p"
    fi
fi
poweroff -f
