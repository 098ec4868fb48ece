-- When the event at processed_floor was applied, as far as it is known: a
-- full rebuild that raises the floor sets the time of its swap (the moment
-- those events counted in the views); prune, the processed_at of the row at
-- its new floor, read before that row goes. The status's "last applied"
-- time when no processed_events row is above the floor (db/status.ts).
-- NULL: not known (a floor raised before this column, or never raised).
ALTER TABLE processed_floor ADD COLUMN applied_at TIMESTAMP;
