//! The Linux KVM userspace ABI for x86_64, byte for byte: ioctl numbers, structures, constants.
#![cfg_attr(not(test), no_std)]
