"""Free synthetic training data rendered from the Anny body model."""
