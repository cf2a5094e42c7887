// <vitrine-products for="player-id"> is a button that opens a sheet with
// every active product of the catalog (GET /api/v1/products) and its price.
// The product on screen in the player is marked, at the price viewers pay
// now, and can be bought from the sheet: a product is on sale while its
// card is shown, so the others are listed, not sold.
//
// Attributes: for (the player's id), layout (overlay: a round button, for a
// page where the player fills the screen).
import { price } from '../sdk/vitrine-player.js';

const bag = '<svg viewBox="0 0 24 24" aria-hidden="true"><path fill="none" stroke="currentColor" stroke-width="1.8" stroke-linejoin="round" d="M5 8h14l-1 13H6L5 8z"/><path fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" d="M9 10V6a3 3 0 0 1 6 0v4"/></svg>';

const css = `
:host { display: inline-block; font: 15px/1.4 var(--vitrine-font, system-ui, sans-serif); }
[hidden] { display: none !important; }
button { font: inherit; border: 0; border-radius: 18px; padding: 8px 14px; cursor: pointer; background: #333; color: #fff;
  display: inline-flex; align-items: center; gap: 6px; }
button:focus-visible { outline: 2px solid #fff; outline-offset: 2px; }
.open svg { width: 20px; height: 20px; }
.n { font-size: 12px; background: var(--vitrine-accent, #ff3d6e); border-radius: 9px; padding: 0 6px; }
:host([layout=overlay]) .open { width: 48px; height: 48px; padding: 0; justify-content: center; border-radius: 50%;
  background: rgba(0,0,0,.5); position: relative; }
:host([layout=overlay]) .open .label { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); }
:host([layout=overlay]) .open .n { position: absolute; right: -2px; top: -2px; }
dialog { border: 0; padding: 0; background: #1b1b1b; color: #eee; border-radius: 14px; width: min(480px, calc(100% - 24px));
  max-height: min(80vh, 640px); box-shadow: 0 10px 40px rgba(0,0,0,.6); }
dialog::backdrop { background: rgba(0,0,0,.5); }
:host([layout=overlay]) dialog { margin: auto 0 0; width: 100%; max-width: 100%; border-radius: 14px 14px 0 0; max-height: 70vh; }
header { display: flex; justify-content: space-between; align-items: center; padding: 10px 14px; border-bottom: 1px solid #2a2a2a;
  position: sticky; top: 0; background: #1b1b1b; }
h2 { margin: 0; font-size: 1.05rem; }
ul { list-style: none; margin: 0; padding: 10px; display: grid; gap: 8px; }
li { display: grid; grid-template-columns: 56px 1fr auto; gap: 10px; align-items: center; background: #242424; border-radius: 10px; padding: 8px; }
li[data-onscreen] { outline: 2px solid var(--vitrine-accent, #ff3d6e); }
img { width: 56px; height: 56px; object-fit: contain; background: #f3f3f3; border-radius: 8px; }
.title { font-weight: 600; }
.price { font-weight: 700; }
.list { text-decoration: line-through; opacity: .6; margin-left: 6px; font-weight: 400; font-size: .85em; }
.tag { font-size: 12px; color: var(--vitrine-accent, #ff3d6e); font-weight: 700; }
.stock { font-size: 12px; opacity: .7; }
li .buy { background: var(--vitrine-accent, #ff3d6e); }
.empty { padding: 14px; opacity: .7; }
`;

export class VitrineProducts extends HTMLElement {
  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${css}</style>
      <button type="button" class="open" aria-haspopup="dialog">${bag}<span class="label">Products</span><span class="n" hidden></span></button>
      <dialog aria-labelledby="products-title">
        <header><h2 id="products-title">Products in this show</h2><button type="button" class="close">Close</button></header>
        <ul></ul>
        <p class="empty" hidden>No products yet.</p>
      </dialog>`;
    this.dialog = root.querySelector('dialog');
    this.listEl = root.querySelector('ul');
    this.countEl = root.querySelector('.n');
    this.products = [];
    this.card = null; // the card on screen, with the price paid now
    root.querySelector('.open').addEventListener('click', () => this.open());
    root.querySelector('.close').addEventListener('click', () => this.dialog.close());
    // A tap on the backdrop (outside the sheet) closes it.
    this.dialog.addEventListener('click', (e) => { if (e.target === this.dialog) this.dialog.close(); });
    this.onCard = (e) => {
      if (e.target !== this.player) return;
      this.card = e.type === 'vitrine-card' ? e.detail.card : null;
      this.render();
    };
  }

  connectedCallback() {
    document.addEventListener('vitrine-card', this.onCard);
    document.addEventListener('vitrine-card-hide', this.onCard);
    // Wait for the page to give the player its server before asking it.
    setTimeout(() => this.load(), 0);
  }

  disconnectedCallback() {
    document.removeEventListener('vitrine-card', this.onCard);
    document.removeEventListener('vitrine-card-hide', this.onCard);
  }

  get player() { return document.getElementById(this.getAttribute('for')) || document.querySelector('vitrine-player'); }

  async load() {
    const player = this.player;
    if (!player) return;
    try {
      const res = await fetch(`${player.server}/api/v1/products`);
      if (res.ok) this.products = (await res.json()).products || [];
    } catch { /* the next opening tries again */ }
    this.render();
  }

  async open() {
    this.dialog.showModal();
    await this.load(); // the catalog may have changed since
  }

  render() {
    this.countEl.hidden = !this.products.length;
    this.countEl.textContent = String(this.products.length);
    this.shadowRoot.querySelector('.empty').hidden = this.products.length > 0;
    const server = this.player ? this.player.server : location.origin;
    this.listEl.textContent = '';
    for (const p of this.products) {
      const on = this.card && this.card.sku === p.sku ? this.card : null;
      const li = document.createElement('li');
      li.dataset.sku = p.sku;
      if (on) li.dataset.onscreen = '';
      const img = document.createElement('img');
      img.alt = '';
      if (p.image_url) img.src = new URL(p.image_url, `${server}/`).href;
      const info = document.createElement('div');
      const title = document.createElement('div');
      title.className = 'title';
      title.textContent = p.title;
      const cost = document.createElement('div');
      cost.className = 'price';
      cost.textContent = price(on ? on.price_minor : p.price_minor, p.currency);
      if (on && on.list_price_minor > on.price_minor) {
        const list = document.createElement('span');
        list.className = 'list';
        list.textContent = price(on.list_price_minor, p.currency);
        cost.append(list);
      }
      const stock = document.createElement('div');
      stock.className = on ? 'tag' : 'stock';
      stock.textContent = on ? 'On screen now' : (p.stock > 0 ? `${p.stock} in stock` : 'Out of stock');
      info.append(title, cost, stock);
      li.append(img, info);
      if (on) {
        const buy = document.createElement('button');
        buy.type = 'button';
        buy.className = 'buy';
        buy.textContent = 'Buy';
        // The player's card shows how the buy went.
        buy.addEventListener('click', () => { this.dialog.close(); this.player.buy(); });
        li.append(buy);
      }
      this.listEl.append(li);
    }
  }
}

if (!customElements.get('vitrine-products')) customElements.define('vitrine-products', VitrineProducts);
