//! The MSR bitmap (SDM §25.6.9), the I/O bitmaps A/B (§25.6.4) and the MSR load/store lists
//! (§25.7.2, §25.8.2), built over memory the caller owns (pages from the host allocator).

use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;

/// Whether an MSR access is a read (RDMSR) or a write (WRMSR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrAccess {
    /// RDMSR.
    Read,
    /// WRMSR.
    Write,
}

/// The 4 KiB MSR bitmap: read-low (MSRs 0–0x1fff) at 0, read-high (0xc000_0000–0xc000_1fff)
/// at 1024, write-low at 2048, write-high at 3072. A set bit makes the access exit; MSRs
/// outside both ranges always exit.
pub struct MsrBitmap<'a> {
    page: &'a mut [u8; 4096],
}

/// Byte offset and bit of `msr`'s bit for `access`, or `None` outside the covered ranges.
pub const fn msr_bit(msr: u32, access: MsrAccess) -> Option<(usize, u8)> {
    let (base, n) = match msr {
        0..=0x1fff => (0, msr),
        0xc000_0000..=0xc000_1fff => (1024, msr - 0xc000_0000),
        _ => return None,
    };
    let base = match access {
        MsrAccess::Read => base,
        MsrAccess::Write => base + 2048,
    };
    Some((base + (n / 8) as usize, (n % 8) as u8))
}

impl<'a> MsrBitmap<'a> {
    /// Takes `page` and makes every access exit.
    pub fn new_intercept_all(page: &'a mut [u8; 4096]) -> Self {
        page.fill(0xff);
        Self { page }
    }

    /// Lets the guest access `msr` without exiting (`pass` = true) or makes it exit. Returns
    /// false for MSRs outside the bitmap's ranges (they always exit).
    pub fn set_passthrough(&mut self, msr: u32, access: MsrAccess, pass: bool) -> bool {
        let Some((byte, bit)) = msr_bit(msr, access) else {
            return false;
        };
        let Some(b) = self.page.get_mut(byte) else {
            return false;
        };
        if pass {
            *b &= !(1 << bit);
        } else {
            *b |= 1 << bit;
        }
        true
    }

    /// Whether an access to `msr` exits.
    pub fn intercepted(&self, msr: u32, access: MsrAccess) -> bool {
        match msr_bit(msr, access) {
            Some((byte, bit)) => self.page.get(byte).is_none_or(|b| b & (1 << bit) != 0),
            None => true,
        }
    }
}

/// I/O bitmaps A (ports 0–0x7fff) and B (0x8000–0xffff): a set bit makes the port exit. An
/// access of several bytes exits if any of its ports' bits is set.
pub struct IoBitmaps<'a> {
    a: &'a mut [u8; 4096],
    b: &'a mut [u8; 4096],
}

impl<'a> IoBitmaps<'a> {
    /// Takes the two pages and makes every port exit.
    pub fn new_intercept_all(a: &'a mut [u8; 4096], b: &'a mut [u8; 4096]) -> Self {
        a.fill(0xff);
        b.fill(0xff);
        Self { a, b }
    }

    /// The byte of `port`'s bit (None cannot happen: a 15-bit port number / 8 < 4096) and
    /// the bit.
    fn byte(&mut self, port: u16) -> (Option<&mut u8>, u8) {
        let page = if port < 0x8000 {
            &mut *self.a
        } else {
            &mut *self.b
        };
        let n = usize::from(port & 0x7fff);
        (page.get_mut(n / 8), (n % 8) as u8)
    }

    /// Lets the guest access `port` without exiting, or makes it exit.
    pub fn set_passthrough(&mut self, port: u16, pass: bool) {
        if let (Some(b), bit) = self.byte(port) {
            if pass {
                *b &= !(1 << bit);
            } else {
                *b |= 1 << bit;
            }
        }
    }

    /// Whether an access to `port` exits.
    pub fn intercepted(&mut self, port: u16) -> bool {
        match self.byte(port) {
            (Some(b), bit) => *b & (1 << bit) != 0,
            (None, _) => true,
        }
    }
}

/// One entry of a VM-entry MSR-load, VM-exit MSR-store or VM-exit MSR-load list (SDM
/// Table 25-15): 16 bytes, the list 16-byte aligned.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsrEntry {
    /// MSR index.
    pub index: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// Value loaded or stored.
    pub data: u64,
}

const_assert_eq!(size_of::<MsrEntry>(), 16);
const_assert_eq!(offset_of!(MsrEntry, index), 0);
const_assert_eq!(offset_of!(MsrEntry, reserved), 4);
const_assert_eq!(offset_of!(MsrEntry, data), 8);

/// An MSR list in caller memory with a count, bounded by the list's capacity and the CPU's
/// recommended maximum (`VmxCapMsrs::max_msr_list_entries`).
pub struct MsrList<'a> {
    entries: &'a mut [MsrEntry],
    len: usize,
}

impl<'a> MsrList<'a> {
    /// An empty list over `entries`, limited to `max` entries.
    pub fn new(entries: &'a mut [MsrEntry], max: u32) -> Self {
        let cap = entries.len().min(max as usize);
        let (entries, _) = entries.split_at_mut(cap);
        Self { entries, len: 0 }
    }

    /// Sets `index` to `data`, adding it if absent; false if the list is full.
    pub fn set(&mut self, index: u32, data: u64) -> bool {
        let (used, free) = self.entries.split_at_mut(self.len);
        if let Some(e) = used.iter_mut().find(|e| e.index == index) {
            e.data = data;
            return true;
        }
        match free.first_mut() {
            Some(e) => {
                *e = MsrEntry {
                    index,
                    reserved: 0,
                    data,
                };
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The value stored for `index`.
    pub fn get(&self, index: u32) -> Option<u64> {
        self.entries
            .iter()
            .take(self.len)
            .find(|e| e.index == index)
            .map(|e| e.data)
    }

    /// The count to write into the VMCS.
    pub fn count(&self) -> u32 {
        self.len as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_bitmap_layout() {
        assert_eq!(msr_bit(0, MsrAccess::Read), Some((0, 0)));
        assert_eq!(msr_bit(0x1fff, MsrAccess::Write), Some((2048 + 1023, 7)));
        assert_eq!(msr_bit(0xc000_0080, MsrAccess::Read), Some((1024 + 16, 0)));
        assert_eq!(msr_bit(0xc000_0102, MsrAccess::Write), Some((3072 + 32, 2)));
        assert_eq!(msr_bit(0x2000, MsrAccess::Read), None);
        assert_eq!(msr_bit(0xc000_2000, MsrAccess::Read), None);
        let mut page = [0u8; 4096];
        let mut bm = MsrBitmap::new_intercept_all(&mut page);
        assert!(bm.intercepted(0x10, MsrAccess::Read));
        // FS_BASE readable and writable; TSC read-only passthrough.
        assert!(bm.set_passthrough(0xc000_0100, MsrAccess::Read, true));
        assert!(bm.set_passthrough(0xc000_0100, MsrAccess::Write, true));
        assert!(bm.set_passthrough(0x10, MsrAccess::Read, true));
        assert!(!bm.set_passthrough(0x4000_0000, MsrAccess::Read, true));
        assert!(!bm.intercepted(0x10, MsrAccess::Read));
        assert!(bm.intercepted(0x10, MsrAccess::Write));
        assert!(bm.intercepted(0x4000_0000, MsrAccess::Read));
        assert!(bm.set_passthrough(0x10, MsrAccess::Read, false));
        assert!(bm.intercepted(0x10, MsrAccess::Read));
        assert_eq!(page[1024 + 32], 0xfe);
        assert_eq!(page[3072 + 32], 0xfe);
        assert_eq!(page.iter().filter(|&&b| b != 0xff).count(), 2);
    }

    #[test]
    fn io_bitmaps() {
        let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
        let mut io = IoBitmaps::new_intercept_all(&mut a, &mut b);
        io.set_passthrough(0x80, true);
        io.set_passthrough(0xffff, true);
        assert!(!io.intercepted(0x80) && io.intercepted(0x81) && !io.intercepted(0xffff));
        assert_eq!(a[0x10], 0xfe);
        assert_eq!(b[4095], 0x7f);
    }

    #[test]
    fn msr_list() {
        let mut mem = [MsrEntry::default(); 4];
        let mut l = MsrList::new(&mut mem, 2);
        assert!(l.set(0xc000_0081, 1));
        assert!(l.set(0xc000_0082, 2));
        assert!(l.set(0xc000_0081, 3));
        assert!(!l.set(0xc000_0084, 4), "limited to the CPU's maximum");
        assert_eq!(
            (l.count(), l.get(0xc000_0081), l.get(0xc000_0084)),
            (2, Some(3), None)
        );
        assert_eq!(
            mem[0],
            MsrEntry {
                index: 0xc000_0081,
                reserved: 0,
                data: 3
            }
        );
    }
}
