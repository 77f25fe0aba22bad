//! Guest-triggerable conditions are logged through a budget: the first few occurrences, then
//! one in ten thousand with the running count. A hostile guest must not be able to fill the
//! host's disk or drown real problems by repeating one bad request. Shared by everything on
//! the host that reads what a guest writes: hull-vmm's devices and the runtime's pod.

pub struct LogBudget {
    seen: u64,
    free: u64,
}

impl LogBudget {
    pub const fn new(free: u64) -> Self {
        LogBudget { seen: 0, free }
    }

    /// Count one occurrence; true if this one may be logged.
    pub fn allow(&mut self) -> bool {
        self.seen += 1;
        self.seen <= self.free || self.seen.is_multiple_of(10_000)
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn logs_the_first_few_then_rarely() {
        let mut b = super::LogBudget::new(3);
        let allowed = (0..20_000).filter(|_| b.allow()).count();
        assert_eq!(allowed, 3 + 2);
        assert_eq!(b.seen(), 20_000);
    }
}
