//! Applies one layer (an uncompressed tar stream) to a directory, safely.
//!
//! Written here rather than with `tar::Archive::unpack`: a layer is not a plain archive
//! (whiteouts delete what lower layers made; hardlinks may point into lower layers), and
//! a hostile one must never write outside its root (crates.md: "never `unpack_in`").
//!
//! Every path is opened relative to the root's descriptor with openat2(2):
//! RESOLVE_IN_ROOT resolves symlinks as the container will see them (`/var/run -> /run`
//! lands in the root's /run), so nothing can resolve outside. On top of that the layer
//! is refused, not merely contained, when an entry
//! - names an absolute path or has a `..` component,
//! - would be written through a symlink whose target climbs above the root (`../..`),
//! - is a hardlink whose target is absolute, has `..`, or is missing,
//! - goes past the entry-count or byte limits (every byte written counts: a hardlink
//!   copied from a lower layer, a sparse file's holes), or would leave the filesystem
//!   with less than the space it must keep free (checked while writing, not only before),
//! - is a hardlink into a lower layer whose target is not a regular file (a FIFO there
//!   would block the open, with the store lock held, forever),
//! - is a PAX-format sparse file (`GNU.sparse.*` records), which is not supported. GNU
//!   sparse entries (type `S`) are written sparse: their holes are seeked over.
//!
//! Device nodes are skipped with a warning (some old images carry /dev entries; the
//! runtime makes a container's devices itself). Whiteouts (image-spec "Whiteouts"):
//! in a snapshot (btrfs) the named entries of lower layers are deleted, and an opaque
//! directory loses every child a lower layer made; for overlayfs they become overlay
//! whiteouts (a 0:0 character device) and the `trusted.overlay.opaque` attribute.
//! Overlayfs's own attributes (`trusted.overlay.*`, and `user.overlay.*`, which it reads
//! when mounted with `userxattr`) are never taken from a layer: they would let an image
//! forge whiteouts, opaque directories or redirects.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;

use crate::regular::{self, OpenError, Resolve};

/// The prefix of a whiteout entry's name, and the name that makes a directory opaque.
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Bounds on one layer, against tar bombs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: u64,
    /// Bytes of file content written (a sparse file's holes included).
    pub max_bytes: u64,
    /// Bytes the root's filesystem must keep free, checked every [`SPACE_CHECK_BYTES`]
    /// written and every [`SPACE_CHECK_ENTRIES`] entries; 0: not checked.
    pub min_free_bytes: u64,
}

/// How often free space is checked while unpacking: often enough that a layer cannot
/// overshoot the reserve by much, rarely enough that statvfs costs nothing.
pub const SPACE_CHECK_BYTES: u64 = 16 << 20;
pub const SPACE_CHECK_ENTRIES: u64 = 4096;

/// The copy buffer; also the unit in which a sparse file's zeros are seeked over.
const CHUNK: usize = 128 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_bytes: 64 << 30,
            min_free_bytes: 0,
        }
    }
}

/// How the layer relates to the ones below it.
#[derive(Debug, Clone)]
pub enum Target {
    /// The root already holds the lower layers (a btrfs snapshot of the parent layer):
    /// whiteouts delete.
    Snapshot,
    /// The root holds only this layer's changes (an overlayfs layer); `lowers` are the
    /// layers below, topmost first, where hardlink targets may live.
    Overlay { lowers: Vec<PathBuf> },
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?}: absolute paths are refused")]
    Absolute { path: String },
    #[error("layer entry {path:?}: `..` components are refused")]
    DotDot { path: String },
    #[error("layer entry {path:?}: it would be written through a symlink that leaves the root")]
    SymlinkEscape { path: String },
    #[error("layer entry {path:?}: hardlink to {target:?} refused ({why})")]
    Hardlink {
        path: String,
        target: String,
        why: &'static str,
    },
    #[error("layer has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("layer unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the store's filesystem is nearly full while unpacking the layer: {free} bytes free, {needed} kept free")]
    NearlyFull { free: u64, needed: u64 },
    #[error("layer entry {path:?}: PAX sparse files (GNU.sparse.* records) are not supported")]
    PaxSparse { path: String },
    #[error("reading the layer's tar stream: {0}")]
    Tar(#[source] std::io::Error),
    #[error("layer entry {path:?}: {what}: {source}")]
    Fs {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, UnpackError>;

fn fs_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Fs {
        path: path.display().to_string(),
        what,
        source: e.into(),
    }
}

/// An entry's path made relative and checked: no absolute path, no `..`; `.` and empty
/// components dropped. None for the root itself.
pub fn clean_path(raw: &[u8]) -> Result<Option<PathBuf>> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.first() == Some(&b'/') {
        return Err(UnpackError::Absolute { path: shown() });
    }
    let mut out = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(UnpackError::DotDot { path: shown() }),
            p => out.push(OsStr::from_bytes(p)),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

struct Unpacker<'a> {
    root: OwnedFd,
    target: &'a Target,
    limits: Limits,
    report: Report,
    /// Paths this layer made: its own whiteouts never delete them.
    made: HashSet<PathBuf>,
    /// Directories whose times are set last (writing into them changes them).
    dir_times: Vec<(PathBuf, u64)>,
    /// Bytes written since free space was last checked.
    unchecked_bytes: u64,
}

/// Applies the tar stream `layer` to `root`. On error the root is left partly written:
/// the caller unpacks into a scratch directory and discards it.
pub fn unpack(layer: impl Read, root: &Path, target: &Target, limits: Limits) -> Result<Report> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fs_err(root, "opening the layer's root"))?;
    let mut u = Unpacker {
        root: root_fd,
        target,
        limits,
        report: Report::default(),
        made: HashSet::new(),
        dir_times: Vec::new(),
        unchecked_bytes: 0,
    };
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().map_err(UnpackError::Tar)? {
        let entry = entry.map_err(UnpackError::Tar)?;
        u.report.entries += 1;
        if u.report.entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        // Entries cost inodes and directory blocks even when they hold no bytes.
        if u.report.entries.is_multiple_of(SPACE_CHECK_ENTRIES) {
            u.check_space()?;
        }
        u.entry(entry)?;
    }
    for (path, mtime) in std::mem::take(&mut u.dir_times) {
        let times = timestamps(mtime);
        // Best effort: a directory a later entry replaced is simply gone.
        if let Ok(fd) = u.open_in_root(&path, OFlags::PATH | OFlags::DIRECTORY) {
            let _ = rustix::fs::utimensat(&fd, "", &times, AtFlags::EMPTY_PATH);
        }
    }
    Ok(u.report)
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(0),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Unpacker<'_> {
    /// Copies `from` into `out`, counting every byte against the byte limit before it
    /// is written and checking free space as it goes. With `sparse`, whole chunks of
    /// zeros are seeked over instead of written (the file's length is set at the end).
    fn write_content(
        &mut self,
        from: &mut impl Read,
        out: &mut std::fs::File,
        path: &Path,
        sparse: bool,
        what: &'static str,
    ) -> Result<u64> {
        let io = |e| UnpackError::Fs {
            path: path.display().to_string(),
            what,
            source: e,
        };
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            self.charge(n as u64)?;
            if sparse && is_zero(&buf[..n]) {
                out.seek(SeekFrom::Start(total + n as u64)).map_err(io)?;
            } else {
                out.write_all(&buf[..n]).map_err(io)?;
            }
            total += n as u64;
        }
        if sparse {
            out.set_len(total).map_err(io)?;
        }
        Ok(total)
    }

    /// Counts `n` more bytes of content, refusing them past the limit, and checks the
    /// filesystem's free space every SPACE_CHECK_BYTES.
    fn charge(&mut self, n: u64) -> Result<()> {
        let bytes = self.report.bytes.saturating_add(n);
        if bytes > self.limits.max_bytes {
            return Err(UnpackError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        self.report.bytes = bytes;
        self.unchecked_bytes += n;
        if self.unchecked_bytes >= SPACE_CHECK_BYTES {
            self.unchecked_bytes = 0;
            self.check_space()?;
        }
        Ok(())
    }

    /// Refuses to go on when the root's filesystem has less than `min_free_bytes` free.
    fn check_space(&self) -> Result<()> {
        let needed = self.limits.min_free_bytes;
        if needed == 0 {
            return Ok(());
        }
        let st = rustix::fs::fstatvfs(&self.root)
            .map_err(fs_err(Path::new("."), "checking free space"))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < needed {
            return Err(UnpackError::NearlyFull { free, needed });
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let Some(path) = clean_path(&raw)? else {
            return Ok(()); // "./": the root itself keeps its own metadata
        };
        let name: OsString = path
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_default();
        let parent_rel = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent = self.parent_dir(&parent_rel, &path)?;
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE.as_bytes() {
            return self.opaque(parent.as_fd(), &parent_rel);
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let hidden = OsStr::from_bytes(hidden);
            return self.whiteout(parent.as_fd(), &parent_rel.join(hidden), hidden);
        }
        let header = entry.header().clone();
        let mode = Mode::from_raw_mode(header.mode().map_err(UnpackError::Tar)? & 0o7777);
        // Some tar writers leave the owner fields empty: root, as tar(1) reads them.
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                self.directory(parent.as_fd(), &name, &path, mode)?;
                self.made.insert(path.clone());
                let dir = rustix::fs::openat(
                    parent.as_fd(),
                    &name,
                    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(fs_err(&path, "opening the directory"))?;
                self.owner_and_mode(&dir, &path, uid, gid, mode)?;
                self.xattrs(&mut entry, &dir, &path)?;
                self.dir_times.push((path, mtime));
                return Ok(());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                refuse_pax_sparse(&mut entry, &path)?;
                self.replace(parent.as_fd(), &name, &path)?;
                let file = rustix::fs::openat(
                    parent.as_fd(),
                    &name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(fs_err(&path, "creating the file"))?;
                let mut out = std::fs::File::from(file);
                // The tar crate hands a GNU sparse file's holes over as zeros.
                let sparse = kind == tar::EntryType::GNUSparse;
                self.write_content(&mut entry, &mut out, &path, sparse, "writing the file")?;
                let file = OwnedFd::from(out);
                self.owner_and_mode(&file, &path, uid, gid, mode)?;
                self.xattrs(&mut entry, &file, &path)?;
                rustix::fs::futimens(&file, &timestamps(mtime))
                    .map_err(fs_err(&path, "setting times"))?;
            }
            tar::EntryType::Symlink => {
                let target = header
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                self.replace(parent.as_fd(), &name, &path)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), parent.as_fd(), &name)
                    .map_err(fs_err(&path, "creating the symlink"))?;
                owner_at(parent.as_fd(), &name, &path, uid, gid)?;
                let _ = rustix::fs::utimensat(
                    parent.as_fd(),
                    &name,
                    &timestamps(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
            }
            tar::EntryType::Link => {
                let target = header
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                self.hardlink(parent.as_fd(), &name, &path, &target)?;
            }
            tar::EntryType::Fifo => {
                self.replace(parent.as_fd(), &name, &path)?;
                rustix::fs::mknodat(parent.as_fd(), &name, FileType::Fifo, mode, 0)
                    .map_err(fs_err(&path, "creating the FIFO"))?;
                owner_at(parent.as_fd(), &name, &path, uid, gid)?;
                // mknod applied the umask; the entry's mode is meant exactly.
                rustix::fs::chmodat(parent.as_fd(), &name, mode, AtFlags::empty())
                    .map_err(fs_err(&path, "setting the mode"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                self.report.warnings.push(format!(
                    "skipped device node /{} (the runtime makes a container's devices)",
                    path.display()
                ));
                return Ok(());
            }
            other => {
                self.report.warnings.push(format!(
                    "skipped /{}: unsupported tar entry type {other:?}",
                    path.display()
                ));
                return Ok(());
            }
        }
        self.made.insert(path);
        Ok(())
    }

    /// Opens `rel` (a cleaned path) below the root as the container would resolve it.
    fn open_in_root(&self, rel: &Path, flags: OFlags) -> std::result::Result<OwnedFd, Errno> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rustix::fs::openat2(
            &self.root,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The entry's parent directory, made (0755, root-owned) where missing. Refused when
    /// reaching it would follow a symlink that climbs above the root.
    fn parent_dir(&mut self, parent: &Path, entry: &Path) -> Result<OwnedFd> {
        let beneath = rustix::fs::openat2(
            &self.root,
            if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            },
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        );
        match beneath {
            Ok(fd) => return Ok(fd),
            // An absolute symlink (fine: resolved in the root) or one that climbs out.
            Err(Errno::XDEV) if self.climbs_out(parent)? => {
                return Err(UnpackError::SymlinkEscape {
                    path: entry.display().to_string(),
                })
            }
            _ => {}
        }
        // Missing directories are made one by one, each under its resolved parent; a
        // dangling symlink on the way (`var/run -> /run` before /run exists) is
        // followed by making its target, as the container would see it.
        let mut want = parent.to_path_buf();
        for _ in 0..40 {
            match self.open_in_root(&want, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(fd) => return Ok(fd),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(fs_err(entry, "opening its parent directory")(e)),
            }
            let parts: Vec<OsString> = want
                .components()
                .map(|c| c.as_os_str().to_os_string())
                .collect();
            let mut fd = self
                .open_in_root(Path::new(""), OFlags::PATH | OFlags::DIRECTORY)
                .map_err(fs_err(entry, "opening the root"))?;
            let mut so_far = PathBuf::new();
            let mut redirected = None;
            for (i, part) in parts.iter().enumerate() {
                so_far.push(part);
                match self.open_in_root(&so_far, OFlags::PATH | OFlags::DIRECTORY) {
                    Ok(next) => fd = next,
                    Err(Errno::NOENT) => {
                        if let Ok(target) =
                            rustix::fs::readlinkat(&fd, part.as_os_str(), Vec::new())
                        {
                            let target = target.into_bytes();
                            let mut next = if target.first() == Some(&b'/') {
                                PathBuf::new()
                            } else {
                                so_far.parent().map(Path::to_path_buf).unwrap_or_default()
                            };
                            next.push(OsStr::from_bytes(&target));
                            next.extend(&parts[i + 1..]);
                            redirected = Some(clamped(&next));
                            break;
                        }
                        rustix::fs::mkdirat(&fd, part.as_os_str(), Mode::from_raw_mode(0o755))
                            .map_err(fs_err(&so_far, "creating a parent directory"))?;
                        fd = self
                            .open_in_root(&so_far, OFlags::PATH | OFlags::DIRECTORY)
                            .map_err(fs_err(&so_far, "opening a parent directory"))?;
                    }
                    Err(e) => return Err(fs_err(&so_far, "opening a parent directory")(e)),
                }
            }
            match redirected {
                Some(next) => want = next,
                None => return Ok(fd),
            }
        }
        Err(fs_err(entry, "resolving its parent directory")(Errno::LOOP))
    }

    /// Whether resolving `rel` inside the root follows a relative symlink whose `..`
    /// would climb above the root (path_resolution(7), walked by hand: the kernel's
    /// RESOLVE_BENEATH says only that *something* left, absolute symlinks included).
    fn climbs_out(&self, rel: &Path) -> Result<bool> {
        let mut todo: Vec<OsString> = rel
            .components()
            .rev()
            .map(|c| c.as_os_str().to_os_string())
            .collect();
        let mut at: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(part) = todo.pop() {
            match part.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    if at.pop().is_none() {
                        return Ok(true);
                    }
                    continue;
                }
                _ => {}
            }
            at.push(part);
            let here: PathBuf = at.iter().collect();
            let Ok(target) = rustix::fs::readlinkat(&self.root, &here, Vec::new()) else {
                continue; // not a symlink (or missing: made later as a directory)
            };
            links += 1;
            if links > 40 {
                return Ok(true); // ELOOP: treat as hostile
            }
            at.pop();
            let target = target.into_bytes();
            if target.first() == Some(&b'/') {
                at.clear();
            }
            for p in target.split(|b| *b == b'/').rev() {
                todo.push(OsString::from_vec(p.to_vec()));
            }
        }
        Ok(false)
    }

    /// Removes whatever sits at `name` unless it is a directory (which a new directory
    /// entry keeps, and a file entry replaces).
    fn replace(&self, parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<()> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                remove_at(parent, name).map_err(fs_err(path, "replacing a directory"))
            }
            Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(fs_err(path, "replacing the old entry")),
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(fs_err(path, "looking at the old entry")(e)),
        }
    }

    fn directory(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        mode: Mode,
    ) -> Result<()> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => return Ok(()),
            Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(fs_err(path, "replacing the old entry"))?,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(fs_err(path, "looking at the old entry")(e)),
        }
        rustix::fs::mkdirat(parent, name, mode).map_err(fs_err(path, "creating the directory"))
    }

    fn owner_and_mode(
        &self,
        fd: &OwnedFd,
        path: &Path,
        uid: u64,
        gid: u64,
        mode: Mode,
    ) -> Result<()> {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(id(uid))),
            Some(rustix::fs::Gid::from_raw(id(gid))),
        )
        .map_err(fs_err(path, "setting the owner"))?;
        // After chown, which clears set-id bits.
        rustix::fs::fchmod(fd, mode).map_err(fs_err(path, "setting the mode"))
    }

    /// PAX `SCHILY.xattr.*` records: file capabilities and user attributes. Others
    /// (trusted.*, user.overlay.*: see the module's comment; security labels) are
    /// skipped with a warning.
    fn xattrs<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        fd: &OwnedFd,
        path: &Path,
    ) -> Result<()> {
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return Ok(());
        };
        for ext in exts.flatten() {
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if xattr_allowed(name) {
                rustix::fs::fsetxattr(
                    fd,
                    OsStr::from_bytes(name),
                    ext.value_bytes(),
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(fs_err(path, "setting an extended attribute"))?;
            } else {
                self.report.warnings.push(format!(
                    "skipped extended attribute {} on /{}",
                    String::from_utf8_lossy(name),
                    path.display()
                ));
            }
        }
        Ok(())
    }

    fn hardlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        raw: &[u8],
    ) -> Result<()> {
        let refuse = |why| UnpackError::Hardlink {
            path: path.display().to_string(),
            target: String::from_utf8_lossy(raw).into_owned(),
            why,
        };
        let target = match clean_path(raw) {
            Ok(Some(t)) => t,
            Ok(None) => return Err(refuse("it names the root")),
            Err(UnpackError::Absolute { .. }) => return Err(refuse("absolute target")),
            Err(_) => return Err(refuse("`..` in the target")),
        };
        let parent_of_target = target.parent().unwrap_or(Path::new(""));
        if self.climbs_out(parent_of_target)? {
            return Err(refuse(
                "the target's directory is reached through a symlink that leaves the root",
            ));
        }
        // The link itself, not what a symlink there points to.
        let source = match self.open_in_root(&target, OFlags::PATH | OFlags::NOFOLLOW) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return self.hardlink_from_lower(parent, name, path, &target, raw),
            Err(e) => return Err(fs_err(path, "opening the hardlink's target")(e)),
        };
        let st =
            rustix::fs::fstat(&source).map_err(fs_err(path, "looking at the hardlink's target"))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(refuse("the target is a directory"));
        }
        self.replace(parent, name, path)?;
        rustix::fs::linkat(&source, "", parent, name, AtFlags::EMPTY_PATH)
            .map_err(fs_err(path, "creating the hardlink"))?;
        Ok(())
    }

    /// In an overlay layer, a hardlink to a file of a lower layer becomes a copy (as
    /// overlayfs's copy-up would make it).
    fn hardlink_from_lower(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        target: &Path,
        raw: &[u8],
    ) -> Result<()> {
        let Target::Overlay { lowers } = self.target else {
            return Err(UnpackError::Hardlink {
                path: path.display().to_string(),
                target: String::from_utf8_lossy(raw).into_owned(),
                why: "the target does not exist",
            });
        };
        for lower in lowers {
            let Ok(root) = rustix::fs::open(
                lower,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            // Never a plain open: a FIFO there would block it forever (with the store
            // lock held), and a device must not be opened at all.
            let src = match regular::open_regular(root.as_fd(), target, Resolve::InRootNoFollow) {
                Ok((fd, _)) => fd,
                Err(OpenError::Errno(Errno::NOENT)) => continue,
                Err(e) => {
                    return Err(UnpackError::Hardlink {
                        path: path.display().to_string(),
                        target: String::from_utf8_lossy(raw).into_owned(),
                        why: match e {
                            OpenError::NotRegular(_) | OpenError::Errno(Errno::LOOP) => {
                                "the target in a lower layer is not a regular file"
                            }
                            OpenError::Errno(_) => "the target in a lower layer cannot be opened",
                        },
                    })
                }
            };
            let st = rustix::fs::fstat(&src)
                .map_err(fs_err(path, "looking at the hardlink's target"))?;
            self.replace(parent, name, path)?;
            let dst = rustix::fs::openat(
                parent,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(fs_err(path, "creating the copy"))?;
            let mut out = std::fs::File::from(dst);
            // A copy costs what a file does: a thousand links to one big lower file must
            // not write a thousand times its size past the limit.
            self.write_content(
                &mut std::fs::File::from(src),
                &mut out,
                path,
                false,
                "copying the hardlink's target",
            )?;
            let out = OwnedFd::from(out);
            self.owner_and_mode(
                &out,
                path,
                u64::from(st.st_uid),
                u64::from(st.st_gid),
                Mode::from_raw_mode(st.st_mode & 0o7777),
            )?;
            return Ok(());
        }
        Err(UnpackError::Hardlink {
            path: path.display().to_string(),
            target: String::from_utf8_lossy(raw).into_owned(),
            why: "the target does not exist",
        })
    }

    fn whiteout(&mut self, parent: BorrowedFd<'_>, path: &Path, hidden: &OsStr) -> Result<()> {
        if hidden.is_empty() || hidden == "." || hidden == ".." || self.made.contains(path) {
            return Ok(()); // whiteouts hide lower layers' entries only
        }
        match self.target {
            Target::Snapshot => match remove_at(parent, hidden) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(fs_err(path, "applying a whiteout")(e)),
            },
            Target::Overlay { .. } => {
                self.replace(parent, hidden, path)?;
                rustix::fs::mknodat(parent, hidden, FileType::CharacterDevice, Mode::empty(), 0)
                    .map_err(fs_err(path, "creating an overlay whiteout"))?;
                self.made.insert(path.to_path_buf());
                Ok(())
            }
        }
    }

    fn opaque(&mut self, dir: BorrowedFd<'_>, path: &Path) -> Result<()> {
        match self.target {
            Target::Snapshot => {
                let read = rustix::fs::openat(
                    dir,
                    ".",
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(fs_err(path, "opening an opaque directory"))?;
                for name in list(&read).map_err(fs_err(path, "listing an opaque directory"))? {
                    if !self.made.contains(&path.join(&name)) {
                        remove_at(read.as_fd(), &name)
                            .map_err(fs_err(path, "emptying an opaque directory"))?;
                    }
                }
                Ok(())
            }
            Target::Overlay { .. } => {
                let fd = rustix::fs::openat(
                    dir,
                    ".",
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(fs_err(path, "opening an opaque directory"))?;
                rustix::fs::fsetxattr(
                    &fd,
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(fs_err(path, "marking a directory opaque"))
            }
        }
    }
}

/// `path` with `.` dropped and `..` applied, never above the root (as RESOLVE_IN_ROOT
/// treats it).
fn clamped(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

/// Whether a `SCHILY.xattr.` record's attribute is applied: file capabilities and
/// user attributes, but never overlayfs's own (`user.overlay.*` is what it reads with
/// `userxattr`; `trusted.*` is not applied at all).
fn xattr_allowed(name: &[u8]) -> bool {
    name == b"security.capability"
        || (name.starts_with(b"user.") && !name.starts_with(b"user.overlay."))
}

/// Refuses an entry carrying PAX sparse records: the tar crate does not expand them, so
/// the file would be written as its sparse map and data, not as the file it describes.
fn refuse_pax_sparse<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> Result<()> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Ok(());
    };
    for ext in exts.flatten() {
        if ext.key_bytes().starts_with(b"GNU.sparse.") {
            return Err(UnpackError::PaxSparse {
                path: path.display().to_string(),
            });
        }
    }
    Ok(())
}

fn is_zero(buf: &[u8]) -> bool {
    buf.iter().all(|b| *b == 0)
}

/// Sets the owner of `name` itself (a symlink is not followed).
fn owner_at(parent: BorrowedFd<'_>, name: &OsStr, path: &Path, uid: u64, gid: u64) -> Result<()> {
    rustix::fs::chownat(
        parent,
        name,
        Some(rustix::fs::Uid::from_raw(id(uid))),
        Some(rustix::fs::Gid::from_raw(id(gid))),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(fs_err(path, "setting the owner"))
}

/// Tar's 64-bit ids into 32-bit ones (larger ones are not valid Linux ids).
fn id(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX - 1)
}

/// The names in a directory, without `.` and `..`.
fn list(dir: &OwnedFd) -> std::result::Result<Vec<OsString>, Errno> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    Ok(names)
}

/// Removes `name` under `parent` and, for a directory, everything in it, never
/// following a symlink.
pub fn remove_at(parent: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<(), Errno> {
    let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(parent, name, AtFlags::empty());
    }
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in list(&dir)? {
        remove_at(dir.as_fd(), &child)?;
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_or_refused() {
        assert_eq!(clean_path(b"./a/b/").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(clean_path(b"a//./b").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(clean_path(b"./").unwrap(), None);
        assert!(matches!(
            clean_path(b"/etc/passwd"),
            Err(UnpackError::Absolute { .. })
        ));
        assert!(matches!(
            clean_path(b"a/../../b"),
            Err(UnpackError::DotDot { .. })
        ));
    }
}
