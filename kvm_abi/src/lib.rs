//! The Linux KVM userspace ABI for x86_64, byte for byte: ioctl numbers, structures, constants.
//!
//! This crate is what okvm's kernel core speaks to userspace (QEMU 7.2 to 11.x, selftest-style
//! programs): every structure an x86 KVM ioctl carries, every ioctl number, and the constants of
//! `<linux/kvm.h>` and `<asm/kvm.h>`. It is `no_std`, allocates nothing, and has no `unsafe`
//! outside the two union accessors in [`manifest`].
//!
//! # Naming
//! - Structures, fields and constants carry **exactly Linux's names** (`kvm_regs.rflags`,
//!   `KVM_EXIT_IO`, `KVM_GET_SREGS2`), so each can be checked against the header. A field named
//!   after a Rust keyword is a raw identifier (`r#type`).
//! - Linux's anonymous nested structs and unions get a Rust type named after the path that reaches
//!   them: `kvm_run.io` has type `kvm_run_io`, `kvm_vcpu_events.exception` has type
//!   `kvm_vcpu_events_exception`, `kvm_hyperv_exit.u.synic` has type `kvm_hyperv_exit_synic`. A
//!   union with no member name (C11 anonymous member) becomes the field `u` of type `<parent>_u`:
//!   `run->io` in C is `run.u.io()` here.
//! - Unions are byte-backed structs (`raw` holds the bytes) with one accessor pair per Linux
//!   member, `member()` / `member_mut()`, returning a typed reference; size and alignment are
//!   checked at compile time, so the accessors cannot fail. (zerocopy cannot derive `IntoBytes` for
//!   unions whose members differ in size, and the kernel needs every type as plain bytes.)
//! - An anonymous union of same-sized scalars (`kvm_irq_level { irq | status }`,
//!   `kvm_coalesced_mmio_zone { pad | pio }`, `kvm_dirty_log { dirty_bitmap | padding2 }`, ...)
//!   is one field named after its first or widest member, with accessor methods for the others.
//! - User pointers inside structures (`kvm_msr_filter_range.bitmap`, `kvm_dirty_log.dirty_bitmap`)
//!   are `u64` addresses. Bytes that C leaves as implicit padding are explicit `_pad` fields.
//! - Flexible-array structures (`kvm_msrs`, `kvm_cpuid2`, `kvm_msr_list`, `kvm_irq_routing`,
//!   `kvm_signal_mask`, `kvm_coalesced_mmio_ring`, `kvm_xsave` for XSAVE2, `kvm_nested_state`, ...)
//!   are declared as their fixed header; [`flex`] reads and writes the entries in a byte buffer
//!   with bounds checks that never panic.
//! - Members of other architectures inside shared unions (s390, PowerPC, Arm, RISC-V, LoongArch
//!   exits of `kvm_run`) are not declared; the union's padding covers them.
//!
//! # How it is proven
//! - Every structure is declared through a macro that takes Linux's size, alignment and the offset
//!   of every field, and asserts each at compile time; every type derives zerocopy's `FromBytes`,
//!   `IntoBytes`, `Immutable` and `KnownLayout`, so it has no padding and any bytes are a valid
//!   value.
//! - The same macros record a manifest ([`STRUCTS`], [`CONSTS`], [`IOCTLS`]): the
//!   differential test `tests/abi_vs_linux.rs` generates a C program from it, compiles it against
//!   `<linux/kvm.h>` with the system C compiler, and compares every `sizeof`, `_Alignof`,
//!   `offsetof`, member size, constant and ioctl number; a unit test compares the same items with
//!   the `kvm-bindings` crate; another test fails if a `pub struct` or `pub const` in the source is
//!   missing from the manifest.
//!
//! # Ioctls by descriptor
//! - `/dev/kvm` ([`SYSTEM_IOCTLS`]): `KVM_GET_API_VERSION`, `KVM_CREATE_VM`,
//!   `KVM_CHECK_EXTENSION`, `KVM_GET_VCPU_MMAP_SIZE`, `KVM_GET_SUPPORTED_CPUID`, MSR lists, ...
//! - VM ([`VM_IOCTLS`]): `KVM_CREATE_VCPU`, memory slots, irqchip/PIT, routing, irqfd/ioeventfd,
//!   clock, dirty logging, MSR filter, guest_memfd, devices, ...
//! - vCPU ([`VCPU_IOCTLS`]): `KVM_RUN`, register state, MSRs, CPUID, LAPIC, events, XSAVE, nested
//!   state, debug, ...
//! - device ([`DEVICE_IOCTLS`]): `KVM_{SET,GET,HAS}_DEVICE_ATTR` (also on the other descriptors).
//!
//! Each [`manifest::IoctlInfo`] records the descriptor kinds that accept it.
#![cfg_attr(not(test), no_std)]
#![allow(non_camel_case_types, non_upper_case_globals)]
#![deny(missing_docs)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod consts;
pub mod flex;
pub mod ioctl;
pub mod kvm;
pub mod manifest;
pub mod x86;

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests;

pub use consts::*;
pub use ioctl::*;
pub use kvm::*;
pub use x86::*;

use manifest::{concat, total_len, CType, ConstInfo, IoctlInfo, StructLayout};

const STRUCT_PARTS: &[&[StructLayout]] = &[x86::X86_STRUCTS, kvm::KVM_STRUCTS];
const EMPTY_LAYOUT: StructLayout = StructLayout {
    name: "",
    c: CType::Struct(""),
    size: 0,
    align: 0,
    fields: &[],
};

/// Every structure and union this crate declares.
pub const STRUCTS: [StructLayout; total_len(STRUCT_PARTS)] = concat(STRUCT_PARTS, EMPTY_LAYOUT);

const CONST_PARTS: &[&[ConstInfo]] = &[
    ioctl::IOC_CONSTS,
    consts::GENERAL_CONSTS,
    consts::CAP_CONSTS,
    consts::EXIT_CONSTS,
    consts::INTERNAL_ERROR_CONSTS,
    consts::MEM_CONSTS,
    consts::MP_STATE_CONSTS,
    consts::SYSTEM_EVENT_CONSTS,
    consts::IRQ_CONSTS,
    consts::IOEVENTFD_CONSTS,
    consts::VCPUEVENT_CONSTS,
    consts::QUIRK_CONSTS,
    consts::MSR_FILTER_CONSTS,
    consts::NESTED_CONSTS,
    consts::GUESTDBG_CONSTS,
    consts::CPUID_CONSTS,
    consts::CLOCK_CONSTS,
    consts::DIRTY_CONSTS,
    consts::XEN_CONSTS,
    consts::DEVICE_CONSTS,
    consts::STATS_CONSTS,
    consts::REG_CONSTS,
    consts::GUEST_MEMFD_CONSTS,
    consts::VECTOR_CONSTS,
    consts::SEV_CONSTS,
];
const EMPTY_CONST: ConstInfo = ConstInfo { name: "", value: 0 };

/// Every constant of the Linux uapi headers this crate declares.
pub const CONSTS: [ConstInfo; total_len(CONST_PARTS)] = concat(CONST_PARTS, EMPTY_CONST);

/// Limits Linux KVM enforces outside its uapi headers (not comparable with `<linux/kvm.h>`).
pub const INTERNAL_CONSTS: &[ConstInfo] = consts::INTERNAL_CONSTS;

const IOCTL_PARTS: &[&[IoctlInfo]] = &[
    ioctl::SYSTEM_IOCTLS,
    ioctl::VM_IOCTLS,
    ioctl::VCPU_IOCTLS,
    ioctl::DEVICE_IOCTLS,
];
const EMPTY_IOCTL: IoctlInfo = IoctlInfo {
    name: "",
    value: 0,
    fds: 0,
};

/// Every ioctl number this crate declares, with the descriptors that accept it.
pub const IOCTLS: [IoctlInfo; total_len(IOCTL_PARTS)] = concat(IOCTL_PARTS, EMPTY_IOCTL);
