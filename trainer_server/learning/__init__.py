"""The learners (PPO, SAC) and the registry that maps a trainer type to one."""
