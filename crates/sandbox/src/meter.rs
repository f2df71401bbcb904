//! The host's half of the instrumentation's fuel: a unit's budget handed to its module one slice
//! at a time.
//!
//! The rewritten module counts down the current slice in its exported fuel global (see
//! `herd-instrument`) and calls `herd.refuel` when it is below zero at a check. The [`Meter`]
//! keeps the rest of the budget (the reserve). Whether a unit runs out of fuel, and where, depends
//! only on the total it has burned at a check, never on the slice size: the slices only decide
//! how often the run yields to its caller (to pause, or to be cancelled or stopped by the
//! watchdog). Pure arithmetic; the sandbox reads and writes the global around it.

use crate::YIELD_FUEL;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meter {
    budget: u64,
    /// Fuel not yet handed to the module.
    reserve: u64,
}

/// The budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spent;

impl Meter {
    /// A meter for `budget` and the first slice to put in the module's global.
    pub(crate) fn start(budget: u64) -> (Self, i64) {
        let slice = budget.min(YIELD_FUEL);
        (
            Self {
                budget,
                reserve: budget - slice,
            },
            slice as i64,
        )
    }

    /// The module found `fuel` (its global) below zero at a check: the new value of the global,
    /// at least zero, or [`Spent`] when the budget cannot cover what was burned.
    pub(crate) fn refuel(&mut self, fuel: i64) -> Result<i64, Spent> {
        if i128::from(self.reserve) + i128::from(fuel) < 0 {
            return Err(Spent);
        }
        let deficit = fuel.min(0).unsigned_abs();
        let take = self.reserve.min(deficit.saturating_add(YIELD_FUEL));
        self.reserve -= take;
        // `take` covers the deficit (the check above) and is at most the deficit plus a slice,
        // so the sum fits an i64.
        Ok(fuel.saturating_add(take as i64))
    }

    /// Charges `cost` (a host call) against `fuel`: the new value of the global, or [`Spent`].
    pub(crate) fn charge(&self, fuel: i64, cost: u64) -> Result<i64, Spent> {
        let after = i128::from(fuel) - i128::from(cost);
        if i128::from(self.reserve) + after < 0 {
            return Err(Spent);
        }
        // Never below -(reserve) >= -(u64::MAX) here, but the global is an i64: a cost beyond
        // what fits is beyond any budget's slice too, and leaves the rest in the reserve's hands.
        i64::try_from(after).map_err(|_| Spent)
    }

    /// Fuel burned when the module's global holds `fuel`.
    pub(crate) fn burned(&self, fuel: i64) -> u128 {
        let left = i128::from(self.reserve) + i128::from(fuel);
        (i128::from(self.budget) - left).max(0) as u128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_budget_exactly_and_then_it_is_spent() {
        let budget = 3 * YIELD_FUEL + 10;
        let (mut meter, mut fuel) = Meter::start(budget);
        assert_eq!(fuel, YIELD_FUEL as i64);
        let mut burned_total = 0u64;
        loop {
            // Burn a whole slice and one more, as a basic block overrunning it would.
            let burn = fuel + 1;
            burned_total += burn as u64;
            fuel -= burn;
            match meter.refuel(fuel) {
                Ok(next) => {
                    assert!(next >= 0);
                    fuel = next;
                }
                Err(Spent) => break,
            }
            assert_eq!(meter.burned(fuel), u128::from(burned_total));
        }
        assert!(burned_total > budget);
        assert!(
            burned_total - budget <= 4,
            "it ran out as soon as it was over"
        );
    }

    #[test]
    fn it_runs_out_at_the_first_check_over_budget() {
        // Burning 7 at a time, the 143rd check finds 7 * 143 = 1001 > 1000.
        let (mut meter, mut fuel) = Meter::start(1000);
        let mut checks = 0;
        loop {
            fuel -= 7;
            checks += 1;
            if fuel < 0 {
                match meter.refuel(fuel) {
                    Ok(next) => fuel = next,
                    Err(Spent) => break,
                }
            }
        }
        assert_eq!(checks, 143);
    }

    #[test]
    fn host_charges_come_out_of_the_same_budget() {
        let (meter, fuel) = Meter::start(500);
        let fuel = meter.charge(fuel, 400).expect("within budget");
        assert_eq!(meter.burned(fuel), 400);
        assert_eq!(meter.charge(fuel, 101), Err(Spent));
        assert_eq!(meter.charge(fuel, u64::MAX), Err(Spent));
    }
}
