"""The base layer (stdlib + numpy): value types, the one status table, errors, comparison, the precision
audit summary, ModelSpec, the artifact cache, machine facts, the Record and typed case options."""
