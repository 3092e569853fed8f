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

/// runc's built-in allow list (its `AllowedDevices` as of runc 1.2), which it appends
/// after the spec's own rules. containerd and `runc spec` write only a deny-all rule and
/// rely on it: without it the container's own device nodes could not even be made.
/// Being last, these always win ("the last matching rule decides").
/// (type, major, minor, access); None is the wildcard "*".
const DEFAULT_ALLOWED: [(LinuxDeviceType, Option<i64>, Option<i64>, &str); 11] = [
    // mknod of any character or block device: the node is harmless until opened, and
    // opening it is still subject to the rules (images ship device nodes).
    (LinuxDeviceType::C, None, None, "m"),
    (LinuxDeviceType::B, None, None, "m"),
    // The devices the runtime itself creates in every container's /dev.
    (LinuxDeviceType::C, Some(1), Some(3), "rwm"), // /dev/null
    (LinuxDeviceType::C, Some(1), Some(5), "rwm"), // /dev/zero
    (LinuxDeviceType::C, Some(1), Some(7), "rwm"), // /dev/full
    (LinuxDeviceType::C, Some(1), Some(8), "rwm"), // /dev/random
    (LinuxDeviceType::C, Some(1), Some(9), "rwm"), // /dev/urandom
    (LinuxDeviceType::C, Some(5), Some(0), "rwm"), // /dev/tty
    (LinuxDeviceType::C, Some(5), Some(1), "rwm"), // /dev/console
    (LinuxDeviceType::C, Some(5), Some(2), "rwm"), // /dev/ptmx
    // /dev/pts/*, the container's own devpts instance. (runc 1.2 dropped tun/tap,
    // 10:200, from this list; so does Berth.)
    (LinuxDeviceType::C, Some(136), None, "rwm"),
];

/// The rules to enforce for the spec's `rules`: None when they deny nothing (no
/// program, no v1 rules), else the spec's rules followed by `DEFAULT_ALLOWED`, in
/// runc's order, so indexes below `rules.len()` are the spec's own.
pub fn with_defaults(rules: &[LinuxDeviceCgroup]) -> Option<Vec<LinuxDeviceCgroup>> {
    if !restricts(rules) {
        return None;
    }
    let mut all = rules.to_vec();
    for (typ, major, minor, access) in DEFAULT_ALLOWED {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true);
        r.set_typ(Some(typ));
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.to_string()));
        all.push(r);
    }
    Some(all)
}

/// A request's kind, as the kernel passes it (devices cgroup v1 and the eBPF context
/// share these values).
pub(crate) const CHAR: i32 = DEVCG_DEV_CHAR;
pub(crate) const BLOCK: i32 = DEVCG_DEV_BLOCK;
pub(crate) const MKNOD: i32 = DEVCG_ACC_MKNOD;
pub(crate) const READ: i32 = DEVCG_ACC_READ;
pub(crate) const WRITE: i32 = DEVCG_ACC_WRITE;
pub(crate) const ALL: i32 = ALL_ACCESS;

/// One rule's request pattern, checked against what the spec may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pattern {
    /// CHAR or BLOCK; None for both ("a").
    pub kind: Option<i32>,
    /// READ | WRITE | MKNOD bits.
    pub access: i32,
    /// None is the wildcard.
    pub major: Option<i32>,
    pub minor: Option<i32>,
}

impl Pattern {
    /// Matches every request: such a rule decides alone, whatever came before it.
    pub fn unconditional(&self) -> bool {
        self.kind.is_none() && self.access == ALL && self.major.is_none() && self.minor.is_none()
    }

    /// Whether a request (one kind, its access bits, one device) is this rule's: the
    /// request asks for nothing outside the rule's access, as the program checks.
    pub fn matches(&self, kind: i32, access: i32, major: i32, minor: i32) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && access & !self.access == 0
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }
}

/// The ordered rules' decision on a request (what `program` computes): the last
/// matching rule decides; a request no rule matches is allowed.
pub(crate) fn decide(
    rules: &[(bool, Pattern)],
    kind: i32,
    access: i32,
    major: i32,
    minor: i32,
) -> bool {
    rules
        .iter()
        .rev()
        .find(|(_, p)| p.matches(kind, access, major, minor))
        .is_none_or(|(allow, _)| *allow)
}

pub(crate) fn pattern(rule: &LinuxDeviceCgroup) -> Result<Pattern, String> {
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

    /// `runc spec`'s and containerd's only rule, deny-all, with runc's built-in allow
    /// list after it.
    #[test]
    fn deny_all_alone_keeps_the_default_devices() {
        use LinuxDeviceType::A;
        let spec = [rule(false, Some(A), None, None, "rwm")];
        let rules = with_defaults(&spec).unwrap();
        let p = program(&rules).unwrap();
        let (rd, wr, mk) = (DEVCG_ACC_READ, DEVCG_ACC_WRITE, DEVCG_ACC_MKNOD);
        let (ch, bl) = (DEVCG_DEV_CHAR, DEVCG_DEV_BLOCK);
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            assert_eq!(run(&p, ch, mk, major, minor), 1, "mknod c {major}:{minor}");
            assert_eq!(
                run(&p, ch, rd | wr, major, minor),
                1,
                "rw c {major}:{minor}"
            );
        }
        // mknod of any node, char or block; opening one outside the list is denied.
        assert_eq!(run(&p, ch, mk, 10, 200), 1);
        assert_eq!(run(&p, bl, mk, 8, 0), 1);
        assert_eq!(run(&p, ch, rd, 10, 200), 0);
        assert_eq!(run(&p, ch, rd | wr, 10, 237), 0);
        assert_eq!(run(&p, bl, rd, 8, 0), 0);
        assert_eq!(run(&p, bl, mk | rd, 8, 0), 0);
        // Every /dev/pts/N.
        assert_eq!(run(&p, ch, rd | wr, 136, 4), 1);
        // The spec's rules come first, so the defaults win over a deny of one of them
        // (runc's order) and an allow of another device still applies.
        let spec = [
            rule(false, Some(A), None, None, "rwm"),
            rule(false, Some(LinuxDeviceType::C), Some(1), Some(5), "rwm"),
            rule(true, Some(LinuxDeviceType::C), Some(10), Some(237), "rw"),
        ];
        let p = program(&with_defaults(&spec).unwrap()).unwrap();
        assert_eq!(run(&p, ch, rd, 1, 5), 1);
        assert_eq!(run(&p, ch, rd | wr, 10, 237), 1);
        // No deny in the spec: no program, as before.
        assert!(with_defaults(&[rule(true, Some(A), None, None, "rwm")]).is_none());
        assert!(with_defaults(&[]).is_none());
    }

    /// `decide` (used to check the cgroup v1 translation) agrees with the program.
    #[test]
    fn decide_agrees_with_the_program() {
        use LinuxDeviceType::{A, B, C};
        let rules = with_defaults(&[
            rule(true, Some(A), None, None, "rwm"),
            rule(false, Some(C), Some(1), None, "rw"),
            rule(true, Some(C), Some(1), Some(3), "r"),
            rule(false, Some(B), None, Some(0), "m"),
            rule(false, None, Some(10), None, "w"),
        ])
        .unwrap();
        let p = program(&rules).unwrap();
        let patterns: Vec<(bool, Pattern)> = rules
            .iter()
            .map(|r| (r.allow(), pattern(r).unwrap()))
            .collect();
        for kind in [DEVCG_DEV_CHAR, DEVCG_DEV_BLOCK] {
            for access in 1..=ALL_ACCESS {
                for major in [0, 1, 5, 8, 10, 136] {
                    for minor in [0, 3, 5, 9] {
                        let want = run(&p, kind, access, major, minor) == 1;
                        let got = decide(
                            &patterns,
                            kind,
                            access,
                            major.cast_signed(),
                            minor.cast_signed(),
                        );
                        assert_eq!(got, want, "{kind} {access} {major}:{minor}");
                    }
                }
            }
        }
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
