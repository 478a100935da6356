"""validate: a great-expectations suite over a prepared dataset's manifest (`manifest`, `suite`, `config`,
`cli`)."""
