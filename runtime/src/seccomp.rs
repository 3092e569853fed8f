//! seccomp from the OCI config (linux.seccomp), compiled to BPF with seccompiler.
//!
//! OCI gives each syscall rule its own action; a seccompiler filter has one action for
//! all its rules. So the profile becomes a stack of filters, which the kernel runs all
//! of, keeping the most restrictive answer (seccomp(2), "RETURN VALUE" precedence):
//! a base filter answers ALLOW for every call some rule matches and the default action
//! otherwise, and one filter per other action answers that action for its rules' calls
//! and ALLOW otherwise. A call matching a rule so gets that rule's action, any other
//! call the default. Only x86_64 is compiled: calls from other ABIs (32-bit x86) are
//! killed by the architecture check, which is stricter than the profile, never looser.

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
    if default != SeccompAction::Allow {
        programs.push(filter(any_rule, default.clone(), SeccompAction::Allow)?);
    }
    for (_, (act, rules)) in by_action {
        programs.push(filter(rules, SeccompAction::Allow, act)?);
    }
    Ok(programs)
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

    #[test]
    fn compiles_a_profile_into_a_stack() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read", "write", "exit_group", "not_a_syscall"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
            ]
        }));
        let progs = compile(&p).unwrap();
        // base (default ERRNO(1)) + one for ERRNO(38).
        assert_eq!(progs.len(), 2);
        assert!(progs.iter().all(|p| !p.is_empty()));
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
