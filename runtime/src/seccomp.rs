//! seccomp from the OCI config (linux.seccomp), compiled to BPF with seccompiler.
//!
//! OCI gives each syscall rule its own action; a seccompiler filter has one action for
//! all its rules. So the profile is compiled as several filters: a base filter answers
//! ALLOW for every call some rule matches and the default action otherwise, and one
//! filter per other action answers that action for its rules' calls and ALLOW
//! otherwise. They are chained into one program (`chain`), most restrictive action
//! first (seccomp(2), "RETURN VALUE" precedence), each filter's ALLOW going on to the
//! next: a call matching a rule so gets that rule's action, any other call the default,
//! as the kernel would answer for the stack of them. One program, not a stack: a second
//! filter would be installed under the first, and a profile that denies seccomp(2)
//! itself (libseccomp-based runtimes install one program) could not be installed.
//! Only x86_64 is compiled: calls from other ABIs (32-bit x86) are killed by the
//! architecture check, which is stricter than the profile, never looser.

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{config, Error, Result};
use crate::syscalls;

/// EPERM, what libseccomp-based runtimes return for SCMP_ACT_ERRNO without errnoRet.
const DEFAULT_ERRNO: u32 = 1;

fn action(a: LinuxSeccompAction, errno: Option<u32>, field: &str) -> Result<SeccompAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(DEFAULT_ERRNO)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Unsupported(format!(
                "{field}: SCMP_ACT_NOTIFY (a seccomp agent) is not supported"
            )))
        }
    })
}

fn op(o: LinuxSeccompOperator) -> SeccompCmpOp {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
        LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
        LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
        LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
        LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
        LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
        // Handled by the caller (it needs both values).
        LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(u64::MAX),
    }
}

/// One rule's conditions; `None` when it has none (it matches every call of its names).
fn rule(args: &[oci_spec::runtime::LinuxSeccompArg]) -> Result<Option<SeccompRule>> {
    if args.is_empty() {
        return Ok(None);
    }
    let mut conds = Vec::new();
    for a in args {
        let index = u8::try_from(a.index())
            .ok()
            .filter(|i| *i < 6)
            .ok_or_else(|| {
                config(
                    "linux.seccomp.syscalls.args.index",
                    format!("{} is not 0..5", a.index()),
                )
            })?;
        // OCI's masked-equal is (arg & value) == valueTwo; seccompiler's MaskedEq(mask)
        // compares (arg & mask) with the condition's value.
        let (cmp, value) = match a.op() {
            LinuxSeccompOperator::ScmpCmpMaskedEq => (
                SeccompCmpOp::MaskedEq(a.value()),
                a.value_two().unwrap_or(0),
            ),
            other => (op(other), a.value()),
        };
        conds.push(
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, cmp, value)
                .map_err(|e| config("linux.seccomp.syscalls.args", e.to_string()))?,
        );
    }
    SeccompRule::new(conds)
        .map(Some)
        .map_err(|e| config("linux.seccomp.syscalls.args", e.to_string()))
}

/// Per syscall: `None` matches every call, else any of the rules.
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add(rules: &mut Rules, nr: i64, rule: &Option<SeccompRule>) {
    let entry = rules.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), rule) {
        (Some(list), Some(r)) => list.push(r.clone()),
        (Some(_), None) => *entry = None,
        (None, _) => {}
    }
}

/// seccompiler's form: an empty rule list matches every call.
fn finish(rules: Rules) -> BTreeMap<i64, Vec<SeccompRule>> {
    rules
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect()
}

/// The BPF programs to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>> {
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;
    // Keyed by the action's debug form: SeccompAction is not Ord.
    let mut by_action: BTreeMap<String, (SeccompAction, Rules)> = BTreeMap::new();
    let mut any_rule: Rules = BTreeMap::new();
    for sc in profile.syscalls().as_deref().unwrap_or_default() {
        let act = action(sc.action(), sc.errno_ret(), "linux.seccomp.syscalls.action")?;
        let r = rule(sc.args().as_deref().unwrap_or_default())?;
        for name in sc.names() {
            // Unknown names are skipped as libseccomp-based runtimes do: profiles list
            // calls of other architectures and kernels.
            let Some(nr) = syscalls::number(name) else {
                continue;
            };
            add(&mut any_rule, nr, &r);
            if act != SeccompAction::Allow && act != default {
                let group = by_action
                    .entry(format!("{act:?}"))
                    .or_insert_with(|| (act.clone(), BTreeMap::new()));
                add(&mut group.1, nr, &r);
            }
        }
    }
    let arch = TargetArch::x86_64;
    let mut programs = Vec::new();
    let filter = |rules: Rules, mismatch, matched| {
        SeccompFilter::new(finish(rules), mismatch, matched, arch)
            .and_then(BpfProgram::try_from)
            .map_err(|e| config("linux.seccomp", e.to_string()))
    };
    let mut groups: Vec<(SeccompAction, Rules)> = by_action.into_values().collect();
    // Stable: equal ranks keep the key order.
    groups.sort_by_key(|(act, _)| std::cmp::Reverse(precedence(act)));
    for (act, rules) in groups {
        programs.push(filter(rules, SeccompAction::Allow, act)?);
    }
    if default != SeccompAction::Allow {
        programs.push(filter(any_rule, default.clone(), SeccompAction::Allow)?);
    }
    Ok(if programs.is_empty() {
        Vec::new()
    } else {
        vec![chain(programs)?]
    })
}

/// The kernel's ranking of filter answers when several filters run (seccomp(2),
/// "RETURN VALUE"): the higher one wins.
fn precedence(a: &SeccompAction) -> u8 {
    match a {
        SeccompAction::KillProcess => 7,
        SeccompAction::KillThread => 6,
        SeccompAction::Trap => 5,
        SeccompAction::Errno(_) => 4,
        SeccompAction::Trace(_) => 2,
        SeccompAction::Log => 1,
        SeccompAction::Allow => 0,
    }
}

// Classic BPF (linux/filter.h, linux/seccomp.h).
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const BPF_JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// BPF_MAXINSNS: the longest program seccomp(2) takes.
const MAX_INSNS: usize = 4096;

/// One program running `filters` in order: in every filter but the last, an ALLOW
/// answer becomes a jump to the next filter's first instruction. Classic BPF jumps only
/// forward and each filter ends in returns, so a filter's own jumps stay inside it.
fn chain(filters: Vec<BpfProgram>) -> Result<BpfProgram> {
    let count = filters.len();
    let mut out: BpfProgram = Vec::new();
    for (i, mut f) in filters.into_iter().enumerate() {
        if i + 1 < count {
            let len = f.len();
            for (pc, ins) in f.iter_mut().enumerate() {
                if ins.code == BPF_RET_K && ins.k == SECCOMP_RET_ALLOW {
                    ins.code = BPF_JMP_JA;
                    ins.jt = 0;
                    ins.jf = 0;
                    // Relative to the next instruction: to the first one after `f`.
                    ins.k = u32::try_from(len - pc - 1).unwrap_or(u32::MAX);
                }
            }
        }
        out.extend(f);
    }
    if out.len() > MAX_INSNS {
        return Err(config(
            "linux.seccomp",
            format!(
                "the profile compiles to {} BPF instructions, over the kernel's {MAX_INSNS}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// The programs for a config's linux.seccomp (none when it has no profile).
pub fn for_spec(spec: &oci_spec::runtime::Spec) -> Result<Vec<BpfProgram>> {
    match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => compile(profile),
        None => Ok(Vec::new()),
    }
}

/// Installs the programs in the calling thread (after no_new_privs, or with
/// CAP_SYS_ADMIN still held when the config keeps privileges).
pub fn install(programs: &[BpfProgram]) -> Result<()> {
    for p in programs {
        crate::sys::seccomp_set_filter(p)
            .map_err(crate::error::sys("seccomp(SECCOMP_SET_MODE_FILTER)"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    /// The classic BPF the compiler emits, run on one call (nr, arch, args), so the
    /// chained program's answers can be checked without installing it.
    fn run(prog: &BpfProgram, nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        // struct seccomp_data: nr, arch, instruction_pointer, args[6].
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
        let mut pc = 0usize;
        loop {
            let ins = &prog[pc];
            pc += 1;
            let k = ins.k;
            let jump = |cond: bool| usize::from(if cond { ins.jt } else { ins.jf });
            match ins.code {
                0x20 => {
                    let o = k as usize;
                    acc = u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
                }
                0x00 => acc = k,
                0x01 => x = k,
                0x60 => acc = mem[k as usize],
                0x61 => x = mem[k as usize],
                0x02 => mem[k as usize] = acc,
                0x03 => mem[k as usize] = x,
                0x54 => acc &= k,
                0x05 => pc += k as usize,
                0x15 => pc += jump(acc == k),
                0x25 => pc += jump(acc > k),
                0x35 => pc += jump(acc >= k),
                0x45 => pc += jump(acc & k != 0),
                0x06 => return k,
                other => panic!("opcode {other:#x} not interpreted"),
            }
        }
    }

    const X86_64: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    const ALLOW: u32 = SECCOMP_RET_ALLOW;
    const fn errno(e: u32) -> u32 {
        0x0005_0000 | e // SECCOMP_RET_ERRNO
    }

    #[test]
    fn compiles_a_profile_into_one_chained_program() {
        let nr = |name| u32::try_from(syscalls::number(name).unwrap()).unwrap();
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read", "write", "exit_group", "not_a_syscall"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
            ]
        }));
        let progs = compile(&p).unwrap();
        assert_eq!(progs.len(), 1, "one program, not a stack");
        let prog = &progs[0];
        let none = [0; 6];
        assert_eq!(run(prog, nr("read"), X86_64, none), ALLOW);
        assert_eq!(run(prog, nr("mkdirat"), X86_64, none), errno(38));
        assert_eq!(run(prog, nr("kill"), X86_64, none), 0x8000_0000); // KILL_PROCESS
        assert_eq!(
            run(prog, nr("personality"), X86_64, [8, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(run(prog, nr("personality"), X86_64, none), errno(1));
        assert_eq!(run(prog, nr("seccomp"), X86_64, none), errno(1));
        // Another ABI: killed by the architecture check.
        assert_eq!(run(prog, nr("read"), 0x4000_0003, none), 0x8000_0000);

        // Default allow, a denied seccomp(2) and another errno: both answer, in one
        // program (as a stack the second filter could not go in under the first).
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["seccomp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]
        }));
        let progs = compile(&p).unwrap();
        assert_eq!(progs.len(), 1);
        assert_eq!(run(&progs[0], nr("seccomp"), X86_64, none), errno(1));
        assert_eq!(run(&progs[0], nr("mkdirat"), X86_64, none), errno(38));
        assert_eq!(run(&progs[0], nr("read"), X86_64, none), ALLOW);
        // Nothing but allow: no program.
        let p = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        assert!(compile(&p).unwrap().is_empty());
    }

    #[test]
    fn refuses_notify_and_bad_args() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_NOTIFY"
        }));
        assert!(compile(&p).unwrap_err().to_string().contains("NOTIFY"));
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL",
                          "args": [{"index": 7, "value": 0, "op": "SCMP_CMP_EQ"}]}]
        }));
        assert!(compile(&p).unwrap_err().to_string().contains("index"));
    }
}
