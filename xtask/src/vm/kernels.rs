//! The kernels the VM cells boot: Debian's image packages, fetched with a
//! private apt state, their `vmlinuz` and the modules the guest loads
//! (with their dependencies, decompressed for busybox's insmod).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// Modules the guest loads (with what they depend on; one the kernel has
/// built in needs nothing): 9p for the host's root, a disk and ext4 (and
/// the crc32c it asks the crypto API for) for the I/O tests, a NIC (the
/// node's own interface) and veth for the network tests.
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "virtio_blk",
    "ext4",
    "crc32c_generic",
    "virtio_net",
    "veth",
];

/// A Debian kernel: its suite and the image package's name pattern.
pub struct Kernel {
    pub name: &'static str,
    suite: &'static str,
    /// The package name is `prefix` + version digits + `suffix`.
    prefix: &'static str,
    suffix: &'static str,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suite: "bullseye",
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64-unsigned",
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
    },
    Kernel {
        name: "6.12",
        suite: "trixie",
        prefix: "linux-image-6.12.",
        suffix: "+deb13-amd64-unsigned",
    },
];

/// What a kernel's cells boot.
pub struct KernelFiles {
    pub vmlinuz: PathBuf,
    /// A gzipped cpio archive of `/modules/NN-name.ko`, in load order.
    pub modules: PathBuf,
}

/// The kernel's `vmlinuz` and [`MODULES`], fetched from its Debian suite
/// with a private apt state under `target/vm/apt` (the host's apt is not
/// touched), once.
pub fn kernel_files(dir: &Path, k: &Kernel) -> Result<KernelFiles> {
    let base = dir.join("kernels").join(k.name);
    let files = KernelFiles {
        vmlinuz: base.join("vmlinuz"),
        modules: base.join("modules.cpio.gz"),
    };
    let list = base.join("modules.list");
    let wanted = MODULES.join(" ");
    if files.vmlinuz.is_file()
        && files.modules.is_file()
        && fs::read_to_string(&list).is_ok_and(|l| l == wanted)
    {
        return Ok(files);
    }
    let image = &files.vmlinuz;
    let apt = dir.join("apt").join(k.suite);
    let (sources, lists, cache) = (apt.join("sources"), apt.join("lists"), apt.join("cache"));
    for d in [
        &sources,
        &lists.join("partial"),
        &cache.join("archives/partial"),
    ] {
        fs::create_dir_all(d)?;
    }
    fs::write(
        sources.join(format!("{}.sources", k.suite)),
        format!(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            k.suite
        ),
    )?;
    let opts = [
        "-o".to_owned(),
        "Dir::Etc::sourcelist=/dev/null".to_owned(),
        "-o".to_owned(),
        format!("Dir::Etc::sourceparts={}", sources.display()),
        "-o".to_owned(),
        format!("Dir::State::Lists={}", lists.display()),
        "-o".to_owned(),
        format!("Dir::Cache={}", cache.display()),
        // Downloads into target/, which apt's own user cannot write.
        "-o".to_owned(),
        "APT::Sandbox::User=root".to_owned(),
    ];
    eprintln!(
        "xtask: fetching Debian's {} kernel ({}), once",
        k.name, k.suite
    );
    cmd::run(Command::new("apt-get").args(&opts).args(["update", "-qq"]))?;
    let found = cmd::output(Command::new("apt-cache").args(&opts).args([
        "search",
        "--names-only",
        &format!("^{}", k.prefix.replace('.', "\\.")),
    ]))?;
    let package =
        newest(&found, k).with_context(|| format!("no {}* package in {}", k.prefix, k.suite))?;
    let work = apt.join("download");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    cmd::run(
        Command::new("apt-get")
            .args(&opts)
            .current_dir(&work)
            .args(["download", "-qq", &package]),
    )?;
    let deb = fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let x = work.join("x");
    cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&x))?;
    let vmlinuz = fs::read_dir(x.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the package has no boot/vmlinuz-*")?;
    fs::create_dir_all(&base)?;
    fs::copy(vmlinuz, image)?;
    let tree = module_tree(&x)?;
    let order = module_order(&tree, MODULES)?;
    let staging = base.join("modules-root");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("modules"))?;
    for (i, (name, path)) in order.iter().enumerate() {
        fs::write(
            staging.join(format!("modules/{i:02}-{name}.ko")),
            module_bytes(path)?,
        )?;
    }
    let partial = base.join("modules.cpio.gz.partial");
    cmd::run(
        Command::new("sh")
            .current_dir(&staging)
            .arg("-c")
            .arg(format!(
                "find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
                partial.display()
            )),
    )?;
    fs::rename(&partial, &files.modules)?;
    fs::write(&list, wanted)?;
    let _ = fs::remove_dir_all(&staging);
    let _ = fs::remove_dir_all(&work);
    Ok(files)
}

/// `lib/modules/<release>` of an extracted image package (under `usr/`
/// since Debian 13).
fn module_tree(x: &Path) -> Result<PathBuf> {
    for lib in ["usr/lib/modules", "lib/modules"] {
        if let Some(d) = fs::read_dir(x.join(lib))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("kernel").is_dir())
        {
            return Ok(d);
        }
    }
    bail!("the package has no lib/modules/<release>/kernel")
}

/// A module's name as the kernel knows it (`9pnet_virtio.ko.xz` →
/// `9pnet_virtio`; dashes and underscores are the same).
fn module_name(file: &str) -> Option<String> {
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))?;
    Some(stem.replace('-', "_"))
}

/// A module file's contents, decompressed (busybox's insmod loads plain
/// ELF only).
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return Ok(fs::read(path)?);
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("{tool} -dc {name}"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The `depends=` of a module's `.modinfo`.
fn depends_of(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"depends=";
    let Some(at) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &module[at + KEY.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// `wanted` and what they depend on, dependencies first; built-in ones
/// left out.
fn module_order(tree: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let builtin: Vec<String> = fs::read_to_string(tree.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(l.rsplit('/').next()?))
        .collect();
    let mut index = Vec::new();
    let mut stack = vec![tree.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = module_name(&e.file_name().to_string_lossy()) {
                index.push((n, p));
            }
        }
    }
    fn visit(
        name: &str,
        builtin: &[String],
        index: &[(String, PathBuf)],
        out: &mut Vec<(String, PathBuf)>,
    ) -> Result<()> {
        if builtin.iter().any(|b| b == name) || out.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let (_, path) = index
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("module {name} is neither built in nor shipped"))?;
        for dep in depends_of(&module_bytes(path)?) {
            visit(&dep, builtin, index, out)?;
        }
        out.push((name.to_owned(), path.clone()));
        Ok(())
    }
    let mut out = Vec::new();
    for w in wanted {
        visit(&w.replace('-', "_"), &builtin, &index, &mut out)?;
    }
    Ok(out)
}

/// The newest image package in an `apt-cache search` listing.
fn newest(listing: &str, k: &Kernel) -> Option<String> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let version = name.strip_prefix(k.prefix)?.strip_suffix(k.suffix)?;
            let parts: Option<Vec<u64>> = version.split('.').map(|p| p.parse().ok()).collect();
            Some((parts?, name.to_owned()))
        })
        .max()
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_package() {
        let listing = "linux-image-5.10.0-9-amd64-unsigned - Linux 5.10\n\
                       linux-image-5.10.0-32-amd64-unsigned - Linux 5.10\n\
                       linux-image-5.10.0-32-cloud-amd64-unsigned - cloud\n\
                       linux-image-5.10.0-32-amd64-unsigned-dbg - symbols\n";
        assert_eq!(
            newest(listing, &KERNELS[0]).as_deref(),
            Some("linux-image-5.10.0-32-amd64-unsigned")
        );
        let trixie = "linux-image-6.12.107+deb13-amd64-unsigned - x\nlinux-image-6.12.117+deb13-amd64-unsigned - y\n";
        assert_eq!(
            newest(trixie, &KERNELS[2]).as_deref(),
            Some("linux-image-6.12.117+deb13-amd64-unsigned")
        );
    }

    #[test]
    fn module_names_and_dependencies() {
        assert_eq!(
            module_name("9pnet_virtio.ko.xz").as_deref(),
            Some("9pnet_virtio")
        );
        assert_eq!(module_name("virtio-pci.ko").as_deref(), Some("virtio_pci"));
        assert_eq!(module_name("modules.dep"), None);
        let modinfo = b"\0license=GPL\0depends=9pnet,netfs\0intree=Y\0";
        assert_eq!(depends_of(modinfo), ["9pnet", "netfs"]);
        assert!(depends_of(b"\0depends=\0name=netfs\0").is_empty());
    }
}
