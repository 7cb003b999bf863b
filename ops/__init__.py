"""Operations: one module per operation, four pure functions each (Params, claims, check, plan)."""
