"""Click commands, one module per family; tinyvim.cli assembles them into one group."""
