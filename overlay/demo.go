package overlay

import (
	"context"
	"fmt"
)

// demoProducts is the catalog a fresh install starts with, so the demo
// stream has cards to show before the operator adds products. The images
// are served by the binary itself (web/static/demo), so the demo works
// offline and on a LAN.
func demoProducts() []Product {
	const img = "/static/demo/"
	return []Product{
		{
			SKU: "demo-sneakers", Title: "Trail Runner sneakers",
			Description: "Lightweight trail shoes with a grippy rubber sole and a breathable mesh upper. Sizes 36 to 47.",
			PriceMinor:  8900, Currency: "EUR", ImageURL: img + "sneakers.svg",
			Stock: 60, PerViewerLimit: 2, Active: true,
		},
		{
			SKU: "demo-headphones", Title: "Studio wireless headphones",
			Description: "Over-ear, active noise cancelling, 30 hours of battery and a USB-C fast charge.",
			PriceMinor:  12900, Currency: "EUR", ImageURL: img + "headphones.svg",
			Stock: 40, PerViewerLimit: 1, Active: true,
		},
		{
			SKU: "demo-mug", Title: "Stoneware mug, 350 ml",
			Description: "Hand-glazed stoneware, dishwasher and microwave safe.",
			PriceMinor:  1600, Currency: "EUR", ImageURL: img + "mug.svg",
			Stock: 200, PerViewerLimit: 3, Active: true,
		},
		{
			SKU: "demo-jacket", Title: "Packable rain jacket",
			Description: "Waterproof, taped seams, folds into its own chest pocket.",
			PriceMinor:  7400, Currency: "USD", ImageURL: img + "jacket.svg",
			Stock: 25, PerViewerLimit: 1, Active: true,
		},
		{
			SKU: "demo-backpack", Title: "Roll-top backpack, 20 l",
			Description: "Water-resistant canvas with a padded laptop sleeve and a chest strap.",
			PriceMinor:  6900, Currency: "EUR", ImageURL: img + "backpack.svg",
			Stock: 80, PerViewerLimit: 2, Active: true,
		},
	}
}

// SeedDemoCatalog fills an empty catalog with the demo products and leaves
// any other catalog alone, so it can run at every start without undoing an
// operator's edits. One consequence: an operator who deletes every product
// gets the demo back at the next start; deactivating products keeps them
// out of viewers' sight for good.
//
// The products go in with one ImportProducts call, so a failure leaves the
// catalog empty (and the next start tries again) rather than half seeded.
func SeedDemoCatalog(ctx context.Context, st Store) error {
	existing, err := st.Products(ctx)
	if err != nil {
		return fmt.Errorf("seed demo catalog: %w", err)
	}
	if len(existing) > 0 {
		return nil
	}
	if err := st.ImportProducts(ctx, demoProducts()); err != nil {
		return fmt.Errorf("seed demo catalog: %w", err)
	}
	return nil
}
