//! Whose file it is: the owner and mode checks made when a queue file is opened, and the group
//! given to it at creation.
//!
//! Any process that can write a queue file is trusted with message contents (docs/DESIGN.md,
//! section 9), so `open` must not use a file that someone this process does not trust could
//! have written. The rule, checked on the open descriptor (`fstat`, so the file checked is the
//! file used):
//!
//! * A file **writable by others** (`o+w`) is always refused.
//! * A file **owned by the effective uid** is accepted (with `g+w` too: only the owner, or root,
//!   can have chosen its group and mode, so a group-writable file of ours was shared on purpose,
//!   for example with [`PipelineOptions::group`](crate::PipelineOptions::group)).
//! * A file **owned by anyone else** is accepted only if it is a group file of a group this
//!   process is in: group-writable, and its group is the effective gid or one of the
//!   supplementary groups (`getgroups`). Members of that group are trusted by being in it.
//!   Everything else is refused — root included: root can open any file, but it follows the
//!   same rule, so a root service never uses a file an unprivileged user planted for it.
//!
//! Creating a file writable by others is refused at create for the same reason (nobody could
//! open it).

use crate::error::Error;
use nix::libc;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why an opener does not trust a file (the `reason` of [`Error::Untrusted`]).
const WRITABLE_BY_OTHERS: &str = "it is writable by others";
const FOREIGN_NOT_SHARED: &str =
    "it belongs to another user and is not group-writable for a group this process is in";

/// Refuses a creation mode that would make the file writable by others, or that has bits
/// beyond the permission bits.
pub(crate) fn check_create_mode(mode: u32) -> Result<(), Error> {
    if mode & !0o777 != 0 {
        return Err(Error::InvalidOptions(format!(
            "mode {mode:#o} has bits beyond the permission bits (0o777)"
        )));
    }
    if mode & 0o002 != 0 {
        return Err(Error::InvalidOptions(format!(
            "mode {mode:#o} makes the file writable by others, and shmq refuses to open such a \
             file; share it with a group instead (`group(gid)`)"
        )));
    }
    Ok(())
}

/// The effective uid.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether this process is in group `gid`: its effective gid or a supplementary group.
fn in_group(gid: u32) -> bool {
    // SAFETY: getegid has no preconditions and cannot fail.
    if unsafe { libc::getegid() } == gid {
        return true;
    }
    // At most NGROUPS_MAX (65536) entries; ask for the count first, then fill.
    // SAFETY: a size of 0 asks only for the count and writes nothing.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let Ok(n) = usize::try_from(n) else {
        return false;
    };
    let mut groups = vec![0 as libc::gid_t; n];
    let size = libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `groups` has room for `size` entries, which is all getgroups writes.
    let got = unsafe { libc::getgroups(size, groups.as_mut_ptr()) };
    let got = usize::try_from(got).unwrap_or(0).min(groups.len());
    groups[..got].contains(&gid)
}

/// The opener's verdict on a file with this owner, group and mode (the rule in the module docs).
fn verdict(
    owner: u32,
    group: u32,
    mode: u32,
    me: u32,
    member: impl Fn(u32) -> bool,
) -> Option<&'static str> {
    if mode & 0o002 != 0 {
        return Some(WRITABLE_BY_OTHERS);
    }
    if owner == me {
        return None;
    }
    if mode & 0o020 != 0 && member(group) {
        return None;
    }
    Some(FOREIGN_NOT_SHARED)
}

/// Refuses, with an [`Error::Untrusted`] naming what was found, a file this process must not
/// trust (the rule in the module docs).
pub(crate) fn check_open(path: &Path, meta: &std::fs::Metadata) -> Result<(), Error> {
    let (owner, group, mode) = (meta.uid(), meta.gid(), meta.mode() & 0o7777);
    let me = euid();
    match verdict(owner, group, mode, me, in_group) {
        None => Ok(()),
        Some(reason) => Err(Error::Untrusted {
            path: path.to_path_buf(),
            owner,
            group,
            mode,
            euid: me,
            reason,
        }),
    }
}

/// Gives the new file `group` (`fchown`), if one was asked for.
pub(crate) fn set_group(
    file: &std::fs::File,
    path: &Path,
    group: Option<u32>,
) -> Result<(), Error> {
    match group {
        None => Ok(()),
        Some(gid) => std::os::unix::fs::fchown(file, None, Some(gid))
            .map_err(|e| Error::io(path, "give the group to", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;
    const OTHER: u32 = 1001;
    const MY_GROUP: u32 = 50;
    const NOT_MY_GROUP: u32 = 51;

    fn v(owner: u32, group: u32, mode: u32) -> Option<&'static str> {
        verdict(owner, group, mode, ME, |g| g == MY_GROUP)
    }

    #[test]
    fn own_files_are_trusted_unless_writable_by_others() {
        assert_eq!(v(ME, NOT_MY_GROUP, 0o600), None);
        assert_eq!(v(ME, NOT_MY_GROUP, 0o660), None);
        assert_eq!(v(ME, MY_GROUP, 0o666), Some(WRITABLE_BY_OTHERS));
        assert_eq!(v(ME, MY_GROUP, 0o602), Some(WRITABLE_BY_OTHERS));
    }

    #[test]
    fn foreign_files_are_trusted_only_as_group_files_of_a_group_we_are_in() {
        assert_eq!(v(OTHER, MY_GROUP, 0o660), None);
        assert_eq!(v(OTHER, MY_GROUP, 0o620), None);
        assert_eq!(v(OTHER, MY_GROUP, 0o640), Some(FOREIGN_NOT_SHARED));
        assert_eq!(v(OTHER, MY_GROUP, 0o600), Some(FOREIGN_NOT_SHARED));
        assert_eq!(v(OTHER, NOT_MY_GROUP, 0o660), Some(FOREIGN_NOT_SHARED));
        assert_eq!(v(OTHER, MY_GROUP, 0o666), Some(WRITABLE_BY_OTHERS));
    }

    #[test]
    fn create_refuses_modes_writable_by_others() {
        assert!(check_create_mode(0o600).is_ok());
        assert!(check_create_mode(0o660).is_ok());
        assert!(check_create_mode(0o666).is_err());
        assert!(check_create_mode(0o4600).is_err());
    }

    #[test]
    fn this_process_is_in_its_own_effective_group() {
        // SAFETY: getegid has no preconditions.
        let egid = unsafe { libc::getegid() };
        assert!(in_group(egid));
    }
}
