"""What the user gives: models, example inputs, data, metrics and their code."""
