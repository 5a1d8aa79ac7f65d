//! Field offsets of kernel structures, from the kernel's own type information
//! (`/sys/kernel/btf/vmlinux`), for the kernel fields the BPF programs read by offset:
//! a thread's TLS base, which CPython's thread states are found through, its ids, and
//! the run queue and per-CPU variables a CPU's steal clock is read through.

use std::fs;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_TYPE_TAG: u32 = 18;

/// The section of per-CPU variables, whose offsets are from each CPU's per-CPU base.
const PER_CPU_SECTION: &[u8] = b".data..percpu";

/// One member of a struct or union: its name, type and offset in bits.
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

/// A type, as far as finding member offsets needs.
enum Type {
    /// A struct or union.
    Aggregate {
        name: u32,
        members: Vec<Member>,
    },
    /// A typedef or qualifier of another type.
    Alias(u32),
    /// A global variable.
    Variable {
        name: u32,
    },
    /// A data section: its variables' type ids and offsets.
    Section {
        name: u32,
        variables: Vec<(u32, u32)>,
    },
    Other,
}

/// The parsed types of a BTF blob.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    /// The running kernel's types, or `None` if it publishes no BTF.
    pub fn read() -> Option<Btf> {
        Btf::parse(&fs::read("/sys/kernel/btf/vmlinux").ok()?)
    }

    fn parse(data: &[u8]) -> Option<Btf> {
        let u32_at = |offset: usize| -> Option<u32> {
            Some(u32::from_le_bytes(
                data.get(offset..offset + 4)?.try_into().ok()?,
            ))
        };
        if u16::from_le_bytes(data.get(0..2)?.try_into().ok()?) != BTF_MAGIC {
            return None;
        }
        let header_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_start = header_len + type_off;
        let strings_start = header_len + str_off;
        let strings = data.get(strings_start..strings_start + str_len)?.to_vec();
        // Type ids start at 1; id 0 is void.
        let mut types = vec![Type::Other];
        let mut at = types_start;
        while at < types_start + type_len {
            let name = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let size_or_type = u32_at(at + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let bitfields = info >> 31 == 1;
            at += 12;
            let (parsed, extra) = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let members = (0..vlen)
                        .map(|index| {
                            let member = at + index * 12;
                            let offset = u32_at(member + 8)?;
                            Some(Member {
                                name: u32_at(member)?,
                                type_id: u32_at(member + 4)?,
                                bit_offset: if bitfields {
                                    offset & 0xff_ffff
                                } else {
                                    offset
                                },
                            })
                        })
                        .collect::<Option<Vec<_>>>()?;
                    (Type::Aggregate { name, members }, vlen * 12)
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    (Type::Alias(size_or_type), 0)
                }
                KIND_VAR => (Type::Variable { name }, 4),
                KIND_DATASEC => {
                    let variables = (0..vlen)
                        .map(|index| {
                            let entry = at + index * 12;
                            Some((u32_at(entry)?, u32_at(entry + 4)?))
                        })
                        .collect::<Option<Vec<_>>>()?;
                    (Type::Section { name, variables }, vlen * 12)
                }
                _ => (Type::Other, extra_bytes(kind, vlen)?),
            };
            types.push(parsed);
            at += extra;
        }
        Some(Btf { types, strings })
    }

    fn string(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// The byte offset of `path` (`["thread", "fsbase"]`) inside the kernel's struct
    /// `name`, or `None` if it has no such member. A part of the path is also looked
    /// for inside the unnamed structs and unions at its level, as C reaches them.
    pub fn member_offset(&self, name: &str, path: &[&str]) -> Option<u64> {
        // A scan, not a map of every name: a recording asks for a handful of offsets.
        let mut type_id = self.types.iter().position(|ty| {
            matches!(ty, Type::Aggregate { name: found, members }
                if !members.is_empty() && self.string(*found) == name.as_bytes())
        })?;
        let mut bits = 0u64;
        for part in path {
            let (member_bits, member_type) = self.find_member(type_id, part.as_bytes(), 0)?;
            bits += member_bits;
            type_id = member_type;
        }
        bits.is_multiple_of(8).then_some(bits / 8)
    }

    /// The bit offset and type of member `name` of aggregate `type_id`, directly or in
    /// one of its unnamed members, `depth` such members down.
    fn find_member(&self, type_id: usize, name: &[u8], depth: u32) -> Option<(u64, usize)> {
        const MAX_UNNAMED_DEPTH: u32 = 4;
        let Type::Aggregate { members, .. } = self.resolve(type_id)? else {
            return None;
        };
        if let Some(member) = members
            .iter()
            .find(|member| self.string(member.name) == name)
        {
            return Some((u64::from(member.bit_offset), member.type_id as usize));
        }
        if depth == MAX_UNNAMED_DEPTH {
            return None;
        }
        members
            .iter()
            .filter(|member| member.name == 0)
            .find_map(|member| {
                let (bits, found) = self.find_member(member.type_id as usize, name, depth + 1)?;
                Some((u64::from(member.bit_offset) + bits, found))
            })
    }

    /// The offset of per-CPU variable `name` from each CPU's per-CPU base, or `None` if
    /// the kernel has no such variable.
    pub fn per_cpu_offset(&self, name: &str) -> Option<u64> {
        self.types.iter().find_map(|ty| match ty {
            Type::Section {
                name: section,
                variables,
            } if self.string(*section) == PER_CPU_SECTION => {
                variables.iter().find_map(|&(type_id, offset)| {
                    match self.types.get(type_id as usize)? {
                        Type::Variable { name: variable }
                            if self.string(*variable) == name.as_bytes() =>
                        {
                            Some(u64::from(offset))
                        }
                        _ => None,
                    }
                })
            }
            _ => None,
        })
    }

    /// The struct or union a type id stands for, through typedefs and qualifiers.
    fn resolve(&self, mut id: usize) -> Option<&Type> {
        for _ in 0..16 {
            match self.types.get(id)? {
                Type::Alias(target) => id = *target as usize,
                other => return Some(other),
            }
        }
        None
    }
}

/// Bytes that follow the common header for the kinds skipped over.
fn extra_bytes(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // int, decl_tag
        1 | 17 => 4,
        // ptr, fwd, func, float
        2 | 7 | 12 | 16 => 0,
        // array
        3 => 12,
        // enum
        6 => vlen * 8,
        // func_proto
        13 => vlen * 8,
        // enum64
        19 => vlen * 12,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_base_lies_inside_the_task_struct() {
        // Every kernel this profiler runs on has BTF: aya needs it for the programs.
        let types = Btf::read().unwrap();
        let offset = types
            .member_offset("task_struct", &["thread", "fsbase"])
            .unwrap();
        let thread = types.member_offset("task_struct", &["thread"]).unwrap();
        assert!(
            offset > thread && offset < thread + 256,
            "{offset} {thread}"
        );
        assert_eq!(types.member_offset("task_struct", &["no_such_field"]), None);
    }

    #[test]
    fn members_of_unnamed_unions_are_found_where_c_finds_them() {
        let types = Btf::read().unwrap();
        // `hrtimer` sits in an unnamed struct in an unnamed union, both at offset 0.
        assert_eq!(types.member_offset("hw_perf_event", &["hrtimer"]), Some(0));
        let hw = types.member_offset("perf_event", &["hw"]).unwrap();
        let expiry = types.member_offset("hrtimer", &["_softexpires"]).unwrap();
        assert_eq!(
            types.member_offset("perf_event", &["hw", "hrtimer", "_softexpires"]),
            Some(hw + expiry)
        );
    }

    #[test]
    fn per_cpu_variables_lie_inside_the_per_cpu_area() {
        let types = Btf::read().unwrap();
        let run_queues = types.per_cpu_offset("runqueues").unwrap();
        let cpu_number = types.per_cpu_offset("cpu_number").unwrap();
        assert_ne!(run_queues, cpu_number);
        assert!(run_queues < 1 << 24, "{run_queues}");
        assert_eq!(types.per_cpu_offset("no_such_variable"), None);
    }
}
