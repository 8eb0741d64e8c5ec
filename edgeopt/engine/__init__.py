"""The one `optimize()`: prepare, plan, search, measure, select, report."""
