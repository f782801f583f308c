"""Programs: conversion (thin command-line front ends over keras_ehrnet)."""
