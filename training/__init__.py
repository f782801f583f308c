"""Programs: training (thin command-line front ends over keras_ehrnet)."""
