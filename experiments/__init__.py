"""Research experiments: the semi-supervised verdict, the default model's shipping rule, real-CT scoring."""
