//! The model with its recurrent state, on the backend it runs on. A stand-in with the shape of
//! `kernels::teb::TebDecoder` (`new(pref, model)`, `step`, `reset`, `backend`), which brings the
//! WGSL step; until it is in this build every preference runs the CPU twin, and says why.

use kernels::backend::Preference;
use kernels::teb::{StepOutput, TebCpu, TebModel};
use kernels::{Backend, KernelError};

pub(super) enum Decoder {
    Cpu(TebCpu),
}

impl Decoder {
    /// The decoder for `pref`, and why it runs where it runs.
    pub fn new(pref: Preference, model: &TebModel) -> Result<(Decoder, &'static str), KernelError> {
        let why = match pref {
            Preference::Cpu => "asked for",
            Preference::Auto | Preference::Hardware | Preference::Gpu => {
                "the TEB step has no GPU kernel in this build: CPU twin"
            }
        };
        Ok((Decoder::Cpu(TebCpu::new(model)), why))
    }

    /// One bin (see `kernels::teb::TebCpu::step`).
    pub fn step(&mut self, x: &[f32], y: &[f32], out: &mut StepOutput) -> Result<(), KernelError> {
        match self {
            Decoder::Cpu(c) => {
                c.step(x, y, out);
                Ok(())
            }
        }
    }

    /// Zero recurrent state.
    pub fn reset(&mut self) {
        match self {
            Decoder::Cpu(c) => c.reset(),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Decoder::Cpu(_) => Backend::Cpu,
        }
    }
}
