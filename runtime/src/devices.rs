//! linux.resources.devices on cgroup v2: there is no devices.allow file; the rules
//! become an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the
//! container's cgroup, which the kernel runs on every open and mknod of a device node.
//!
//! Written here rather than taken from a BPF crate: the program is a dozen instructions
//! per rule with no maps, helpers or relocations, and the crates that assemble and load
//! BPF (aya, libbpf-rs) would bring an ELF loader or a C library into every `create`.
//!
//! Semantics (runtime-spec, as cgroup v1's devices.allow/deny behave): rules apply in
//! order and the last one that matches a request decides; a request no rule matches is
//! allowed. The program checks the rules last to first and returns at the first match.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// One eBPF instruction (linux/bpf.h `struct bpf_insn`): opcode, destination register
/// in the low nibble and source register in the high one, offset, immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ALU64_MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const ALU64_AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const ALU64_RSH_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }, where
// access_type is (access << 16) | type.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;
const DEVCG_DEV_BLOCK: i32 = 1;
const DEVCG_DEV_CHAR: i32 = 2;
const DEVCG_ACC_MKNOD: i32 = 1;
const DEVCG_ACC_READ: i32 = 2;
const DEVCG_ACC_WRITE: i32 = 4;
const ALL_ACCESS: i32 = DEVCG_ACC_MKNOD | DEVCG_ACC_READ | DEVCG_ACC_WRITE;

// Registers: r1 holds the context; the fields are loaded into r2..r5 once.
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const SCRATCH: u8 = 6;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// Whether any rule denies something: without one, everything is allowed and no
/// program is needed.
pub fn restricts(rules: &[LinuxDeviceCgroup]) -> bool {
    rules.iter().any(|r| !r.allow())
}

/// One rule's request pattern, checked against what the spec may hold.
struct Pattern {
    kind: Option<i32>,
    access: i32,
    major: Option<i32>,
    minor: Option<i32>,
}

fn pattern(rule: &LinuxDeviceCgroup) -> Result<Pattern, String> {
    let kind = match rule.typ() {
        None | Some(LinuxDeviceType::A) => None,
        Some(LinuxDeviceType::C | LinuxDeviceType::U) => Some(DEVCG_DEV_CHAR),
        Some(LinuxDeviceType::B) => Some(DEVCG_DEV_BLOCK),
        Some(LinuxDeviceType::P) => {
            return Err("type \"p\" (a FIFO) is not a device cgroup type".into())
        }
    };
    let mut access = 0;
    for c in rule.access().as_deref().unwrap_or("rwm").chars() {
        access |= match c {
            'r' => DEVCG_ACC_READ,
            'w' => DEVCG_ACC_WRITE,
            'm' => DEVCG_ACC_MKNOD,
            other => return Err(format!("access {other:?} is not one of r, w, m")),
        };
    }
    // -1 (or absent) is the wildcard, as in devices.allow's "*".
    let number = |n: Option<i64>, what: &str| match n {
        None | Some(-1) => Ok(None),
        Some(n) => i32::try_from(n)
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| format!("{what} {n} is not a device number")),
    };
    Ok(Pattern {
        kind,
        access,
        major: number(rule.major(), "major")?,
        minor: number(rule.minor(), "minor")?,
    })
}

/// The program for `rules`. Errors name the bad rule.
pub fn program(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>, String> {
    let mut prog = vec![
        insn(LDX_MEM_W, TYPE, R1, CTX_ACCESS_TYPE, 0),
        insn(ALU64_MOV_X, ACCESS, TYPE, 0, 0),
        insn(ALU64_AND_K, TYPE, 0, 0, 0xffff),
        insn(ALU64_RSH_K, ACCESS, 0, 0, 16),
        insn(LDX_MEM_W, MAJOR, R1, CTX_MAJOR, 0),
        insn(LDX_MEM_W, MINOR, R1, CTX_MINOR, 0),
    ];
    for (i, rule) in rules.iter().enumerate().rev() {
        let p = pattern(rule).map_err(|e| format!("linux.resources.devices[{i}]: {e}"))?;
        if p.access == 0 {
            continue; // matches no request
        }
        // The tests; each jumps past the rest of the block when the request differs.
        let mut tests: Vec<Vec<Insn>> = Vec::new();
        if let Some(k) = p.kind {
            tests.push(vec![insn(JMP_JNE_K, TYPE, 0, 0, k)]);
        }
        if p.access != ALL_ACCESS {
            // Matches when the request asks for nothing outside the rule's access.
            tests.push(vec![
                insn(ALU64_MOV_X, SCRATCH, ACCESS, 0, 0),
                insn(ALU64_AND_K, SCRATCH, 0, 0, !p.access & ALL_ACCESS),
                insn(JMP_JNE_K, SCRATCH, 0, 0, 0),
            ]);
        }
        if let Some(m) = p.major {
            tests.push(vec![insn(JMP_JNE_K, MAJOR, 0, 0, m)]);
        }
        if let Some(m) = p.minor {
            tests.push(vec![insn(JMP_JNE_K, MINOR, 0, 0, m)]);
        }
        let unconditional = tests.is_empty();
        let mut block: Vec<Insn> = tests.into_iter().flatten().collect();
        block.push(insn(ALU64_MOV_K, R0, 0, 0, i32::from(rule.allow())));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (at, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K {
                // Relative to the next instruction; to the first one after the block.
                ins.off = i16::try_from(len - at - 1).map_err(|_| "program too long")?;
            }
        }
        prog.extend(block);
        if unconditional {
            // Earlier rules can never decide; the verifier refuses dead code.
            return Ok(prog);
        }
    }
    // No rule matched: allowed.
    prog.push(insn(ALU64_MOV_K, R0, 0, 0, 1));
    prog.push(insn(JMP_EXIT, 0, 0, 0, 0));
    Ok(prog)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        allow: bool,
        typ: Option<LinuxDeviceType>,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow);
        r.set_typ(typ);
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.to_string()));
        r
    }

    /// A small interpreter for the instructions `program` emits, so the rules'
    /// meaning can be checked without a kernel.
    fn run(prog: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let mut r = [0u64; 11];
        let ctx = [
            (access.cast_unsigned() << 16) | kind.cast_unsigned(),
            major,
            minor,
        ];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1);
                    r[dst] = u64::from(ctx[usize::try_from(i.off).unwrap() / 4]);
                }
                ALU64_MOV_K => r[dst] = i64::from(i.imm).cast_unsigned(),
                ALU64_MOV_X => r[dst] = r[src],
                ALU64_AND_K => r[dst] &= i64::from(i.imm).cast_unsigned(),
                ALU64_RSH_K => r[dst] >>= i.imm,
                JMP_JNE_K => {
                    if r[dst] != i64::from(i.imm).cast_unsigned() {
                        pc += usize::try_from(i.off).unwrap();
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn last_matching_rule_decides_and_the_default_allows() {
        use LinuxDeviceType::{A, B, C};
        // podman's shape: deny everything, then allow some character devices.
        let rules = [
            rule(false, Some(A), None, None, "rwm"),
            rule(true, Some(C), Some(1), Some(3), "rwm"), // /dev/null
            rule(true, Some(C), Some(136), None, "rw"),   // every /dev/pts/N
            rule(true, Some(C), Some(1), Some(5), "r"),   // /dev/zero read-only
        ];
        let p = program(&rules).unwrap();
        let (rd, wr, mk) = (DEVCG_ACC_READ, DEVCG_ACC_WRITE, DEVCG_ACC_MKNOD);
        let ch = DEVCG_DEV_CHAR;
        assert_eq!(run(&p, ch, rd | wr, 1, 3), 1);
        assert_eq!(run(&p, ch, mk, 1, 3), 1);
        assert_eq!(run(&p, ch, rd, 136, 7), 1);
        assert_eq!(run(&p, ch, mk, 136, 7), 0);
        assert_eq!(run(&p, ch, rd, 1, 5), 1);
        assert_eq!(run(&p, ch, rd | wr, 1, 5), 0);
        assert_eq!(run(&p, DEVCG_DEV_BLOCK, rd, 8, 0), 0);
        assert_eq!(run(&p, ch, rd, 1, 8), 0);
        // The deny-all rule is unconditional: no fall-through code after it.
        assert_eq!(p.last().unwrap().code, JMP_EXIT);
        assert_eq!(p[p.len() - 2], insn(ALU64_MOV_K, R0, 0, 0, 0));

        // Only a deny for block devices: the rest falls through to allowed.
        let p = program(&[rule(false, Some(B), None, None, "rwm")]).unwrap();
        assert_eq!(run(&p, DEVCG_DEV_BLOCK, rd, 8, 0), 0);
        assert_eq!(run(&p, ch, rd, 1, 3), 1);
        assert!(restricts(&[rule(false, Some(B), None, None, "rwm")]));
        assert!(!restricts(&[rule(true, Some(A), None, None, "rwm")]));
    }

    #[test]
    fn bad_rules_are_named() {
        let e = program(&[rule(false, None, None, None, "rx")]).unwrap_err();
        assert!(e.contains("devices[0]") && e.contains("'x'"), "{e}");
        let e = program(&[
            rule(false, None, None, None, "r"),
            rule(true, Some(LinuxDeviceType::C), Some(-5), None, "r"),
        ])
        .unwrap_err();
        assert!(e.contains("devices[1]") && e.contains("-5"), "{e}");
    }
}
