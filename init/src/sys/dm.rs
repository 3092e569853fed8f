//! Device-mapper through its ioctls on /dev/mapper/control, enough to create one
//! read-only device from one target (dm-verity for the root). Hand-written because the
//! devicemapper crate needs libclang and libdevmapper at build time; the layout and
//! numbers are from linux/dm-ioctl.h (interface version 4).

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

const DM_IOCTL_TYPE: u8 = 0xfd;
const DM_DEV_CREATE_CMD: u8 = 3;
const DM_DEV_REMOVE_CMD: u8 = 4;
const DM_DEV_SUSPEND_CMD: u8 = 6;
const DM_TABLE_LOAD_CMD: u8 = 9;
const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;

/// `struct dm_ioctl`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`, followed in the buffer by its NUL-terminated parameters.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

const HEADER: usize = std::mem::size_of::<DmIoctl>();
const SPEC: usize = std::mem::size_of::<DmTargetSpec>();

/// One target line of a table.
pub struct Target<'a> {
    pub start_sector: u64,
    pub sectors: u64,
    pub kind: &'a str,
    pub params: &'a str,
}

/// Creates device `name` with one read-only target and activates it; returns its
/// (major, minor). On failure after the create, the half-made device is removed.
pub fn create_readonly(
    control: &File,
    name: &str,
    uuid: &str,
    target: &Target<'_>,
) -> Result<(u32, u32), Errno> {
    let created = call(control, DM_DEV_CREATE_CMD, header(name, uuid, 0, 0)?, &[])?;
    // Later commands name the device by name only: the kernel refuses name and uuid both.
    let header = header(name, "", 0, 0)?;
    let activate = || -> Result<(), Errno> {
        let mut load = header;
        load.target_count = 1;
        load.flags = DM_READONLY_FLAG;
        call(control, DM_TABLE_LOAD_CMD, load, &target_payload(target)?)?;
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the loaded table goes live.
        call(control, DM_DEV_SUSPEND_CMD, header, &[])?;
        Ok(())
    };
    if let Err(e) = activate() {
        let _ = call(control, DM_DEV_REMOVE_CMD, header, &[]);
        return Err(e);
    }
    Ok(decode_dev(created.dev))
}

fn header(name: &str, uuid: &str, target_count: u32, flags: u32) -> Result<DmIoctl, Errno> {
    let mut h = DmIoctl {
        version: [4, 0, 0],
        data_size: 0,
        data_start: 0,
        target_count,
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; DM_NAME_LEN],
        uuid: [0; DM_UUID_LEN],
        data: [0; 7],
    };
    copy_cstr(&mut h.name, name)?;
    copy_cstr(&mut h.uuid, uuid)?;
    Ok(h)
}

/// The target spec and its parameters, padded to 8 bytes as the kernel expects.
fn target_payload(t: &Target<'_>) -> Result<Vec<u8>, Errno> {
    let params_len = t.params.len() + 1;
    let total = (SPEC + params_len).next_multiple_of(8);
    let mut spec = DmTargetSpec {
        sector_start: t.start_sector,
        length: t.sectors,
        status: 0,
        next: u32::try_from(total).map_err(|_| Errno::EINVAL)?,
        target_type: [0; DM_MAX_TYPE_NAME],
    };
    copy_cstr(&mut spec.target_type, t.kind)?;
    let mut buf = vec![0u8; total];
    // SAFETY: `DmTargetSpec` is repr(C) plain data with no padding bytes (8+8+4+4+16),
    // so viewing it as SPEC initialised bytes is sound; the slice lives only in this
    // statement, while `spec` is alive.
    let bytes = unsafe { std::slice::from_raw_parts((&raw const spec).cast::<u8>(), SPEC) };
    buf[..SPEC].copy_from_slice(bytes);
    buf[SPEC..SPEC + t.params.len()].copy_from_slice(t.params.as_bytes());
    Ok(buf)
}

/// Runs one DM ioctl with `header` followed by `payload`; returns the header the kernel
/// wrote back.
fn call(control: &File, cmd: u8, mut header: DmIoctl, payload: &[u8]) -> Result<DmIoctl, Errno> {
    // Room for the kernel's reply data too (it writes the names of things for some
    // commands); 16 KiB is what libdevmapper starts with.
    let size = (HEADER + payload.len()).max(16 * 1024);
    header.data_size = u32::try_from(size).map_err(|_| Errno::EINVAL)?;
    header.data_start = u32::try_from(HEADER).map_err(|_| Errno::EINVAL)?;
    // u64-aligned storage, as struct dm_ioctl requires.
    let mut buf = vec![0u64; size.div_ceil(8)];
    let base = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` holds at least `size` >= HEADER + payload.len() bytes, is 8-byte
    // aligned for DmIoctl, and the two copies write inside it without overlapping
    // their sources (locals and a caller's slice).
    unsafe {
        std::ptr::write(base.cast::<DmIoctl>(), header);
        std::ptr::copy_nonoverlapping(payload.as_ptr(), base.add(HEADER), payload.len());
    }
    let request = nix::request_code_readwrite!(DM_IOCTL_TYPE, cmd, HEADER);
    // SAFETY: the request is a DM command whose argument is a `struct dm_ioctl` buffer
    // of `data_size` bytes, which `buf` is and which outlives the call; the fd is the
    // open control device.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), request, base) };
    Errno::result(rc)?;
    // SAFETY: the kernel wrote back a DmIoctl at the start of the aligned buffer.
    Ok(unsafe { std::ptr::read(base.cast::<DmIoctl>()) })
}

fn copy_cstr(dst: &mut [u8], s: &str) -> Result<(), Errno> {
    if s.len() >= dst.len() || s.as_bytes().contains(&0) {
        return Err(Errno::ENAMETOOLONG);
    }
    dst[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

/// The kernel's huge_encode_dev: minor's low 8 bits, major, then minor's high bits.
fn decode_dev(dev: u64) -> (u32, u32) {
    // Both are masked to at most 32 bits, so the conversions cannot fail.
    let major = u32::try_from((dev >> 8) & 0xfff).unwrap_or(u32::MAX);
    let minor = u32::try_from((dev & 0xff) | ((dev >> 12) & 0xfff_ff00)).unwrap_or(u32::MAX);
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        assert_eq!(HEADER, 312);
        assert_eq!(SPEC, 40);
    }

    #[test]
    fn decodes_device_numbers() {
        assert_eq!(decode_dev((254 << 8) | 3), (254, 3));
        assert_eq!(decode_dev((254 << 8) | 0x34 | (0x12 << 20)), (254, 0x1234));
    }

    #[test]
    fn payload_is_padded_and_terminated() {
        let t = Target {
            start_sector: 0,
            sectors: 16,
            kind: "verity",
            params: "abc",
        };
        let p = target_payload(&t).unwrap();
        assert_eq!(p.len() % 8, 0);
        assert_eq!(&p[SPEC..SPEC + 4], b"abc\0");
        assert_eq!(&p[24..30], b"verity");
        assert_eq!(
            u32::from_ne_bytes(p[20..24].try_into().unwrap()) as usize,
            p.len()
        );
        assert!(copy_cstr(&mut [0u8; 4], "toolong").is_err());
    }
}
