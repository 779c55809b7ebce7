"""Model files for other programs: LAMMPS through DeePMD-kit's C++ interface (:mod:`.lammps`)."""
